"""Tractometry profiles (DIPY's afq_profile with Gaussian weights): a ramp, orientation, the CSV."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from difftract.eval.profiles import (bundle_profiles, gaussian_weights, orient, profiles_csv, summary,
                                     write_profiles_csv)
from difftract.io.sidecar import sidecar_path

SHAPE = (24, 9, 9)


def _ramp():
    """FA rising linearly along x (voxel centres at integers), MD falling: trilinear reads a linear map exactly."""
    x = np.arange(SHAPE[0], dtype=float)[:, None, None] * np.ones(SHAPE)
    return 0.2 + 0.025 * x, 1.2e-3 - 2e-5 * x


def _bundle(n=30, x0=2.0, x1=21.0, seed=0, shift=0.3):
    """Straight streamlines along x from x0 to x1 (both shifted by up to ``shift``), spread in y and z.

    The shift gives each node a spread in x too, so the node covariance is full rank and DIPY's
    Gaussian weights apply (all-equal x would make it singular).
    """
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        y, z = 4 + rng.uniform(-1.5, 1.5, 2)
        d = rng.uniform(-shift, shift)
        npts = int(rng.integers(25, 60))               # different point counts: the nodes come from arc length
        x = np.linspace(x0 + d, x1 + d, npts)
        out.append(np.stack([x, np.full(npts, y), np.full(npts, z)], axis=1))
    return out


def _rois():
    head, tail = np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)
    head[1:3, 2:7, 2:7] = True
    tail[20:23, 2:7, 2:7] = True
    return head, tail


def test_a_straight_bundle_on_a_ramp_gives_the_ramp_at_the_nodes():
    fa, md = _ramp()
    bundle = _bundle()
    p = bundle_profiles({"b": bundle}, fa, md, n_points=20, rois={"b": _rois()})["b"]
    assert p["n"] == 30 and p["weights"] == "gaussian" and p["fa"].shape == p["md"].shape == (20,)
    # node k of a streamline is at x0 + d + k (x1 - x0) / 19; the map is linear between voxel
    # centres, so trilinear interpolation is exact and the weighted mean (weights summing to 1)
    # is the ramp at a weighted mean of the streamlines' node positions: between the ramp at
    # the lowest and at the highest, 0.6 voxel apart (0.015 in FA), up to floating point
    x = np.stack([np.linspace(s[0, 0], s[-1, 0], 20) for s in bundle])
    lo, hi = x.min(0), x.max(0)
    assert np.all(0.2 + 0.025 * lo - 1e-9 <= p["fa"]) and np.all(p["fa"] <= 0.2 + 0.025 * hi + 1e-9)
    assert np.all(1.2e-3 - 2e-5 * hi - 1e-12 <= p["md"]) and np.all(p["md"] <= 1.2e-3 - 2e-5 * lo + 1e-12)
    np.testing.assert_allclose(p["fa"], 0.2 + 0.025 * np.linspace(2.0, 21.0, 20), atol=0.025 * 0.3)
    assert np.all(np.diff(p["fa"]) > 0) and np.all(np.diff(p["md"]) < 0)
    s = summary({"b": p})["b"]
    assert s["n"] == 30 and s["fa"] == pytest.approx(np.mean(p["fa"]))


def test_identical_node_positions_fall_back_to_the_exact_mean():
    fa, md = _ramp()
    p = bundle_profiles({"b": _bundle(shift=0.0)}, fa, md, rois={"b": _rois()})["b"]
    assert p["weights"] == "mean"                      # singular node covariance: no Gaussian weights
    nodes = np.linspace(2.0, 21.0, 20)                 # every streamline's nodes: trilinear reads the ramp exactly
    np.testing.assert_allclose(p["fa"], 0.2 + 0.025 * nodes, atol=1e-9)
    np.testing.assert_allclose(p["md"], 1.2e-3 - 2e-5 * nodes, atol=1e-12)


def test_half_reversed_streamlines_give_the_forward_profile():
    fa, md = _ramp()
    forward = _bundle()
    mixed = [s[::-1].copy() if k % 2 else s for k, s in enumerate(forward)]
    reference = bundle_profiles({"b": forward}, fa, md, rois={"b": _rois()})["b"]
    by_rois = bundle_profiles({"b": mixed}, fa, md, rois={"b": _rois()})["b"]
    np.testing.assert_allclose(by_rois["fa"], reference["fa"], atol=1e-12)
    np.testing.assert_allclose(by_rois["md"], reference["md"], atol=1e-12)
    # without ROIs the bundle follows its first streamline: forward here, so the same profile
    by_first = bundle_profiles({"b": mixed}, fa, md)["b"]
    np.testing.assert_allclose(by_first["fa"], reference["fa"], atol=1e-12)
    # and the ROIs win over the first streamline: a bundle starting reversed still runs head -> tail
    flipped_first = [mixed[1]] + mixed[:1] + mixed[2:]
    assert np.allclose(bundle_profiles({"b": flipped_first}, fa, md, rois={"b": _rois()})["b"]["fa"], reference["fa"])
    # not oriented, half the streamlines run backwards and the profile goes flat
    from dipy.stats.analysis import afq_profile
    flat = afq_profile(fa, mixed, np.eye(4), n_points=20)
    assert np.ptp(flat) < 0.1 * np.ptp(reference["fa"])


def test_orient_turns_each_streamline_to_start_at_the_head():
    head, tail = _rois()
    mixed = [s[::-1].copy() if k % 2 else s for k, s in enumerate(_bundle(10))]
    assert all(s[0, 0] < s[-1, 0] for s in orient(mixed, head, tail))
    assert all(s[0, 0] > s[-1, 0] for s in orient(mixed, tail, head))


def test_small_and_empty_bundles_and_the_csv(tmp_path):
    fa, md = _ramp()
    profiles = bundle_profiles({"one": _bundle(1), "three": _bundle(3), "none": []}, fa, md)
    assert profiles["one"]["n"] == 1 and profiles["one"]["weights"] == "mean"
    assert profiles["three"]["weights"] == "mean" and np.all(np.isfinite(profiles["three"]["fa"]))
    assert profiles["none"]["n"] == 0 and np.all(np.isnan(profiles["none"]["fa"]))
    rows = list(csv.DictReader(io.StringIO(profiles_csv({"det": profiles}))))
    assert len(rows) == 3 * 20 and rows[0]["method"] == "det" and rows[0]["node"] == "0"
    assert {r["fa"] for r in rows if r["bundle"] == "none"} == {""}
    path = write_profiles_csv(tmp_path / "profiles.csv", {"det": profiles})
    assert path.read_text().splitlines()[0] == ("method,bundle,node,streamlines,weights,fa,md_mm2_s,"
                                                "gt_streamlines,gt_fa,gt_md_mm2_s")
    assert {r["gt_fa"] for r in rows} == {""}                          # no ground-truth profile attached
    profiles["three"]["reference"] = profiles["one"]
    rows = list(csv.DictReader(io.StringIO(profiles_csv({"det": profiles}))))
    assert [float(r["gt_fa"]) for r in rows if r["bundle"] == "three"] == pytest.approx(profiles["one"]["fa"], rel=1e-5)
    assert summary(profiles)["three"]["reference"]["n"] == 1
    assert json.loads(sidecar_path(path).read_text())["columns"][0] == "method"


def test_streamlines_in_mm_with_the_image_affine_give_the_voxel_space_profile():
    fa, md = _ramp()
    affine = np.array([[2.0, 0, 0, -10], [0, 2.0, 0, 5], [0, 0, 2.0, 0], [0, 0, 0, 1]])
    voxels = _bundle()
    mm = [s @ affine[:3, :3].T + affine[:3, 3] for s in voxels]
    in_mm = bundle_profiles({"b": mm}, fa, md, affine)["b"]
    np.testing.assert_allclose(in_mm["fa"], bundle_profiles({"b": voxels}, fa, md)["b"]["fa"], atol=1e-9)
    with pytest.raises(ValueError, match="voxel-space"):
        bundle_profiles({"b": mm}, fa, md, affine, rois={"b": _rois()})


@pytest.mark.parametrize("seed", range(4))
def test_gaussian_weights_are_dipys(seed):
    """The batched weights equal DIPY's loop over nodes and streamlines, to rounding."""
    from dipy.stats.analysis import gaussian_weights as dipy_weights
    from dipy.tracking.streamline import Streamlines

    rng = np.random.default_rng(seed)
    bundle = _bundle(n=int(rng.integers(4, 80)), seed=seed, shift=float(rng.uniform(0.05, 1.0)))
    bundle = [s + rng.normal(scale=0.3, size=s.shape) for s in bundle]     # bent, not only shifted
    ours = gaussian_weights(bundle, 20)
    theirs = np.asarray(dipy_weights(Streamlines(bundle), n_points=20))
    assert ours.shape == theirs.shape == (len(bundle), 20)
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=0)
    np.testing.assert_allclose(ours.sum(axis=0), 1.0, rtol=1e-12)
    # a node every streamline passes through (here the first): equal weights, as DIPY gives
    pinned = [np.vstack([[2.0, 4.0, 4.0], s[1:]]) for s in bundle]
    ours, theirs = gaussian_weights(pinned, 20), np.asarray(dipy_weights(Streamlines(pinned), n_points=20))
    np.testing.assert_allclose(ours[:, 0], 1.0 / len(bundle), rtol=1e-12)
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=0)
