"""Interpolation, stopping criteria and seeding against DIPY's own functions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dipy.core.interpolation import trilinear_interpolate4d
from dipy.tracking.stopping_criterion import BinaryStoppingCriterion, ThresholdStoppingCriterion
from dipy.tracking.utils import seeds_from_mask

from difftract.errors import ConfigError
from difftract.tracking.interpolate import nearest, trilinear
from difftract.tracking.seeding import grid_seeds, random_seeds
from difftract.tracking.stopping import (ENDPOINT, OUTSIDEIMAGE, TRACKPOINT, BinaryCriterion,
                                         ThresholdCriterion)

SHAPE = (5, 4, 3)


def points(n=400, seed=0):
    """Random points over and just beyond the grid, plus exact centres, edges and half-voxel borders."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(-0.8, np.array(SHAPE) - 0.2, size=(n, 3))
    special = np.array([[0, 0, 0], [4, 3, 2], [-0.5, 0, 0], [4.5, 0, 0], [4.4999, 3.4999, 2.4999],
                        [1.5, 2.5, 0.5], [-0.5000001, 1, 1], [2, 2, 2.5]], dtype=float)
    return np.vstack([p, special])


def test_trilinear_matches_dipy_inside_and_flags_outside():
    rng = np.random.default_rng(1)
    vol = rng.normal(size=SHAPE + (4,))
    p = points()
    ours, inside = trilinear(torch.as_tensor(vol), torch.as_tensor(p))
    # torch vs DIPY's Cython: an 8-term convex combination summed in another order (and with or
    # without FMA), so up to ~11 roundings of max|vol| apart; 16 eps * max|vol| (~1e-14) allows that,
    # while a wrong corner or half-voxel shift moves the value by O(0.1).
    tol = 16 * np.finfo(np.float64).eps * np.abs(vol).max()
    for i, point in enumerate(p):
        try:
            ref = trilinear_interpolate4d(vol, point)
        except IndexError:
            assert not inside[i] and torch.all(ours[i] == 0)
            continue
        assert inside[i]
        np.testing.assert_allclose(ours[i].numpy(), ref, rtol=0, atol=tol)
    scalar, _ = trilinear(torch.as_tensor(vol[..., 0]), torch.as_tensor(p))
    np.testing.assert_array_equal(scalar.numpy(), ours[:, 0].numpy())
    centres = torch.tensor([[1.0, 2.0, 1.0]], dtype=torch.float64)
    np.testing.assert_array_equal(trilinear(torch.as_tensor(vol), centres)[0][0].numpy(), vol[1, 2, 1])


def test_trilinear_carries_gradients_to_volume_and_points():
    vol = torch.rand(SHAPE + (2,), dtype=torch.float64, requires_grad=True)
    p = torch.tensor([[1.3, 2.2, 0.7], [3.9, 0.1, 1.5]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, q: trilinear(v, q)[0], (vol, p))


def test_binary_criterion_matches_dipy():
    rng = np.random.default_rng(2)
    mask = rng.random(SHAPE) > 0.4
    ref = BinaryStoppingCriterion(mask)
    p = points(seed=3)
    ours = BinaryCriterion(mask).status(torch.as_tensor(p))
    expected = [int(ref.check_point(np.ascontiguousarray(q))) for q in p]
    assert ours.tolist() == expected
    assert {TRACKPOINT, ENDPOINT, OUTSIDEIMAGE} <= set(ours.tolist())
    # rounding is half to even, as rint: 0.5 -> 0, 1.5 -> 2
    codes = BinaryCriterion(np.eye(3)[:, :, None].repeat(1, 2)).status(torch.tensor([[0.5, 0.0, 0.0],
                                                                                        [1.5, 2.0, 0.0]]))
    assert codes.tolist() == [TRACKPOINT, TRACKPOINT]


def test_threshold_criterion_matches_dipy():
    rng = np.random.default_rng(4)
    fa = rng.random(SHAPE)
    ref = ThresholdStoppingCriterion(fa, 0.45)
    p = points(seed=5)
    ours = ThresholdCriterion(fa, 0.45).status(torch.as_tensor(p))
    assert ours.tolist() == [int(ref.check_point(np.ascontiguousarray(q))) for q in p]
    with pytest.raises(ConfigError, match="3D"):
        ThresholdCriterion(np.zeros((2, 2)), 0.1)


@pytest.mark.parametrize("density", [1, 2, 3, (1, 2, 3)])
def test_grid_seeds_match_dipy(density):
    rng = np.random.default_rng(6)
    mask = rng.random(SHAPE) > 0.5
    ours = grid_seeds(mask, density).numpy()
    ref = seeds_from_mask(mask, np.eye(4), density=density if not np.isscalar(density) else [density] * 3)
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_random_seeds_are_reproducible_and_inside_their_voxel():
    mask = np.zeros(SHAPE, bool)
    mask[1, 2, 1] = mask[3, 0, 2] = True
    a = random_seeds(mask, 50, torch.Generator().manual_seed(7))
    b = random_seeds(mask, 50, torch.Generator().manual_seed(7))
    c = random_seeds(mask, 50, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == (100, 3)
    np.testing.assert_array_equal(torch.round(a[:50]).numpy(), np.tile([1, 2, 1], (50, 1)))
    assert torch.all(torch.abs(a[50:] - torch.tensor([3.0, 0, 2])) <= 0.5)
    for bad in (0, 1.5):
        with pytest.raises(ConfigError, match="per voxel"):
            random_seeds(mask, bad, torch.Generator())
    with pytest.raises(ConfigError, match="empty"):
        grid_seeds(np.zeros(SHAPE), 1)
    with pytest.raises(ConfigError, match="density"):
        grid_seeds(mask, 0)


def test_nearest_returns_values_and_flags():
    vol = torch.arange(60, dtype=torch.float32).reshape(SHAPE)
    values, inside = nearest(vol, torch.tensor([[0.4, 0.6, 1.5], [-0.6, 0, 0], [4.4, 3.4, 2.4]]))
    assert inside.tolist() == [True, False, True]
    assert values.tolist() == [vol[0, 1, 2].item(), 0.0, vol[4, 3, 2].item()]
