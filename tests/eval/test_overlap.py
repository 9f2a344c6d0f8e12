"""Bundle overlap: density maps, Dice, weighted Dice, overlap/overreach, detection rate.

Voxel traversal is :func:`difftract.eval.traversal.streamline_voxels` (the Tractometer's
rule); the straight, axis-aligned streamlines used here make every number known by hand.
"""

from __future__ import annotations

import numpy as np
import pytest

from difftract.errors import ConfigError
from difftract.eval import overlap as O
from difftract.eval import traversal
from difftract.io.tractogram import Tractogram

SHAPE = (10, 4, 3)


def row(x0, x1, y=1, z=1, step=1.0):
    """A straight streamline along x on row (y, z), from x0 to x1."""
    x = np.arange(x0, x1 + step / 2, step)
    return np.stack([x, np.full_like(x, y), np.full_like(x, z)], axis=1).astype(np.float32)


def line_map(xs, y=1, z=1, values=1):
    out = np.zeros(SHAPE, dtype=np.int32)
    out[list(xs), y, z] = values
    return out


# ----------------------------------------------------------------------- density maps

def test_density_counts_each_streamline_once_per_voxel():
    # Two overlapping rows, the first densely sampled (many points per voxel).
    density = O.density_map([row(0, 5, step=0.2), row(3, 9)], SHAPE)
    assert density.dtype == np.int32 and density.shape == SHAPE
    np.testing.assert_array_equal(density[:, 1, 1], [1, 1, 1, 2, 2, 2, 1, 1, 1, 1])
    assert density.sum() == 13
    np.testing.assert_array_equal(O.binary_map(density, 2), line_map(range(3, 6)) > 0)
    np.testing.assert_array_equal(O.binary_map(density), density > 0)


def test_density_drops_off_grid_parts_and_handles_no_streamlines():
    density = O.density_map([row(-4, 2)], SHAPE)
    np.testing.assert_array_equal(np.flatnonzero(density[:, 1, 1]), [0, 1, 2])
    assert density.sum() == 3
    assert not O.density_map([], SHAPE).any()


def test_density_of_a_tractogram_uses_its_grid():
    tractogram = Tractogram([row(0, 5), row(3, 9)], np.eye(4), SHAPE)
    np.testing.assert_array_equal(O.density_map(tractogram), O.density_map([row(0, 5), row(3, 9)], SHAPE))
    with pytest.raises(ConfigError, match="differs from the tractogram"):
        O.density_map(tractogram, (10, 4, 4))


def test_density_with_the_real_traversal():
    density = O.density_map([row(0, 5, step=0.2), row(3, 9)], SHAPE)
    np.testing.assert_array_equal(density[:, 1, 1], [1, 1, 1, 2, 2, 2, 1, 1, 1, 1])
    assert density.sum() == 13


# ----------------------------------------------------------------------------- Dice

def test_dice_by_hand_and_edge_cases():
    a, b = line_map(range(0, 6)) > 0, line_map(range(3, 10)) > 0   # 6 and 7 voxels, 3 shared
    assert O.dice(a, b) == pytest.approx(6 / 13)
    assert O.dice(a, a) == 1.0
    assert O.dice(a, np.zeros(SHAPE, bool)) == 0.0
    assert np.isnan(O.dice(np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)))


def test_weighted_dice_by_hand():
    a = line_map([0, 1, 2], values=[2, 1, 1])   # normalised: 1/2, 1/4, 1/4
    b = line_map([1, 2, 3], values=[1, 1, 6])   # normalised: 1/8, 1/8, 3/4
    # shared voxels 1, 2: (1/4 + 1/4 + 1/8 + 1/8) / (1 + 1)
    assert O.weighted_dice(a, b, normalize=True) == pytest.approx(0.375)
    assert O.weighted_dice(a, 10 * b, normalize=True) == pytest.approx(0.375)  # streamline count does not matter
    # raw counts (scilpy's default): (1 + 1 + 1 + 1) / (4 + 8)
    assert O.weighted_dice(a, b) == pytest.approx(1 / 3)
    assert O.weighted_dice(a, a) == 1.0
    assert O.weighted_dice(a, np.zeros(SHAPE)) == 0.0
    assert np.isnan(O.weighted_dice(np.zeros(SHAPE), np.zeros(SHAPE)))


def test_binary_maps_give_weighted_dice_equal_to_dice():
    a, b = line_map(range(0, 6)), line_map(range(3, 9))   # same size: normalised weights are equal
    assert O.weighted_dice(a, b) == pytest.approx(O.dice(a, b)) == pytest.approx(0.5)


# -------------------------------------------------------------------- compare_bundles

def test_compare_bundles_by_hand():
    recovered = {"cc": [row(0, 5), row(0, 5), row(2, 7)],      # counts 2,2,3,3,3,3,1,1 on x = 0..7
                 "cst": [row(0, 9, y=3, z=0)]}
    reference = {"cc": [row(2, 9)],                              # 8 voxels, x = 2..9
                 "cst": np.zeros(SHAPE, dtype=bool),
                 "af": [row(0, 9, y=0, z=2)]}                     # nothing recovered
    reference["cst"][0:5, 3, 0] = True
    scores = O.compare_bundles(recovered, reference, SHAPE, threshold=2)
    assert list(scores) == ["cc", "cst", "af"]

    cc = scores["cc"]            # A = x 0..5 (6 voxels; x 6, 7 below threshold), B = x 2..9, A∩B = x 2..5
    assert (cc.voxels, cc.reference_voxels) == (6, 8)
    assert cc.dice == pytest.approx(8 / 14)
    assert cc.overlap == pytest.approx(4 / 8)
    assert cc.overreach == pytest.approx(2 / 6)
    assert cc.overreach_reference == pytest.approx(2 / 8)
    # wDice on thresholded densities, raw counts: A weights 2,2,3,3,3,3 (12 shared of 16), B 1 each (4 of 8)
    assert cc.wdice == pytest.approx((12 + 4) / (16 + 8))

    cst = scores["cst"]          # A = x 0..9 (threshold 2 keeps nothing: one streamline)
    assert cst.voxels == 0 and cst.dice == 0.0 and cst.overlap == 0.0 and np.isnan(cst.overreach)

    cst1 = O.compare_bundles(recovered, reference, SHAPE)["cst"]   # threshold 1: 10 voxels, 5 in the mask
    assert cst1.overlap == 1.0 and cst1.overreach == pytest.approx(0.5) and cst1.overreach_reference == 1.0
    assert cst1.dice == pytest.approx(10 / 15) and cst1.wdice == pytest.approx((5 + 5) / (10 + 5))

    af = scores["af"]
    assert af.voxels == 0 and af.dice == 0.0 and af.wdice == 0.0 and af.overlap == 0.0
    assert set(af.as_dict()) == {"dice", "wdice", "overlap", "overreach", "overreach_reference", "voxels",
                                 "reference_voxels"}


def test_compare_bundles_refusals():
    ok = {"cc": [row(0, 5)]}
    with pytest.raises(ConfigError, match="without a reference: extra"):
        O.compare_bundles({"extra": [row(0, 5)]}, ok, SHAPE)
    with pytest.raises(ConfigError, match="covers no voxel"):
        O.compare_bundles({}, {"cc": np.zeros(SHAPE, bool)}, SHAPE)
    with pytest.raises(ConfigError, match="mask shape"):
        O.compare_bundles({}, {"cc": np.ones((2, 2, 2), bool)}, SHAPE)
    with pytest.raises(ConfigError, match="at least one reference"):
        O.compare_bundles({}, {}, SHAPE)
    with pytest.raises(ConfigError, match="threshold must be positive"):
        O.compare_bundles(ok, ok, SHAPE, threshold=0)
    with pytest.raises(ConfigError, match="3 positive integers"):
        O.compare_bundles(ok, ok, (10, 4))


# ------------------------------------------------------------------- detection rate

def test_tract_detection_rate_by_hand():
    reference = {"full": line_map(range(10)) > 0, "half": line_map(range(4), y=2) > 0,
                 "forty": line_map(range(5), z=0) > 0, "missing": line_map(range(3), y=0) > 0}
    recovered = {"full": line_map(range(10)) > 0,
                 "half": line_map(range(2, 8), y=2) > 0,      # covers 2 of 4: exactly 0.5
                 "forty": line_map(range(3, 9), z=0) > 0}     # covers 2 of 5
    assert O.tract_detection_rate(recovered, reference) == 0.5
    assert O.tract_detection_rate(recovered, reference, min_overlap=0.4) == 0.75
    assert O.tract_detection_rate(recovered, reference, min_overlap=1.0) == 0.25


def test_refusals_on_maps():
    a = np.zeros(SHAPE, bool)
    with pytest.raises(ConfigError, match="different shapes"):
        O.dice(a, np.zeros((2, 2, 2), bool))
    with pytest.raises(ConfigError, match="negative"):
        O.weighted_dice(-line_map([0]), line_map([0]))
    with pytest.raises(ConfigError, match="non-finite"):
        O.weighted_dice(np.full(SHAPE, np.nan), line_map([0]))
    with pytest.raises(ConfigError, match="threshold must be positive"):
        O.binary_map(line_map([0]), 0)
    with pytest.raises(ConfigError, match="needs the grid shape"):
        O.density_map([row(0, 2)])
    with pytest.raises(ConfigError, match=r"min_overlap must be in \(0, 1\]"):
        O.tract_detection_rate({}, {"x": line_map([0]) > 0}, min_overlap=0)
    with pytest.raises(ConfigError, match="empty map"):
        O.tract_detection_rate({}, {"x": a})
    with pytest.raises(ConfigError, match="without a reference"):
        O.tract_detection_rate({"y": a}, {"x": line_map([0]) > 0})
    with pytest.raises(ConfigError, match="different shapes"):
        O.tract_detection_rate({"x": np.zeros((2, 2, 2), bool)}, {"x": line_map([0]) > 0})
