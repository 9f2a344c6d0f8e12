"""The moved FiberCup: FiberCup's bundles in a new geometry for every seed."""

from __future__ import annotations

import numpy as np
import pytest

from difftract.phantom import PhantomConfig, simulate
from difftract.phantom.geometry import make_tube
from difftract.phantom.presets import FIBERCUP_RADIUS_MM, fibercup, fibercup_moved


def layout(seed: int, **kw):
    return fibercup_moved(np.random.default_rng(seed), streamlines_per_bundle=10, **kw)


def pairwise(points: np.ndarray) -> np.ndarray:
    return np.linalg.norm(points[:, None] - points[None], axis=-1)


def chord_angle(a: np.ndarray, b: np.ndarray) -> float:
    """Degrees between the lines through the ends of two centrelines (0-90)."""
    u, v = a[-1] - a[0], b[-1] - b[0]
    return float(np.degrees(np.arccos(abs(u @ v) / np.linalg.norm(u) / np.linalg.norm(v))))


def test_same_seed_same_layout_other_seed_other_layout():
    a, b, again = layout(9301), layout(9302), layout(9301)
    assert [x.name for x in a.bundles] == [x.name for x in fibercup().bundles]
    for x, y in zip(a.bundles, again.bundles):
        np.testing.assert_array_equal(x.points, y.points)
    moved = [np.abs(x.points - y.points).max() for x, y in zip(a.bundles, b.bundles)]
    assert min(moved) > 1.0, moved


@pytest.mark.parametrize("seed", range(20))
def test_bundles_keep_their_shapes_and_stay_in_the_disc(seed):
    moved = layout(seed)
    original = {b.name: b for b in fibercup(streamlines_per_bundle=10).bundles}
    centre = (np.array(moved.shape) - 1) * moved.voxel_size / 2.0
    for b in moved.bundles:
        # rigid in-plane moves: the distances between control points, and z, are the original's
        np.testing.assert_allclose(pairwise(b.points), pairwise(original[b.name].points), atol=1e-9)
        np.testing.assert_allclose(b.points[:, 2], original[b.name].points[:, 2])
        scale = b.radius[0] / original[b.name].radius[0]
        assert 0.8 <= scale <= 1.25 and np.allclose(np.array(b.radius) / original[b.name].radius, scale)
        rim = make_tube(b, ds=0.5).fibres(np.array([[np.cos(a), np.sin(a)] for a in np.linspace(0, 6.28, 12)]))
        assert np.hypot(*(rim.reshape(-1, 3)[:, :2] - centre[:2]).T).max() <= FIBERCUP_RADIUS_MM + 1e-9
    by = {b.name: b.points for b in moved.bundles}
    # the kissing pair moves as one: its bottleneck (the gap between the pair's middles) is kept
    gap = np.linalg.norm(by["kiss_left"][1] - by["kiss_right"][1])
    assert gap == pytest.approx(np.linalg.norm(original["kiss_left"].points[1] - original["kiss_right"].points[1]))
    # the crossing pair still crosses, its angle (between the ends' chords) turned by at most 20 degrees
    turn = chord_angle(by["horizontal"], by["vertical"]) - chord_angle(original["horizontal"].points,
                                                                       original["vertical"].points)
    assert abs(turn) <= 20.0 + 1e-6

def test_the_moves_reach_every_angle_to_the_grid():
    """The whole layout turns by any angle: the horizontal bundle's direction covers the circle."""
    angles = []
    for seed in range(40):
        h = next(b for b in layout(seed).bundles if b.name == "horizontal").points
        d = h[-1] - h[0]
        angles.append(np.degrees(np.arctan2(d[1], d[0])) % 180.0)
    assert np.histogram(angles, bins=6, range=(0, 180))[0].min() >= 2, sorted(angles)


def test_simulated_geometry_follows_the_seed():
    cfg = dict(preset="fibercup-moved", streamlines_per_bundle=10, snr=None, ndirs=6, nb0=1)
    a, b = simulate(PhantomConfig(seed=1, **cfg)), simulate(PhantomConfig(seed=2, **cfg))
    np.testing.assert_array_equal(a.wm, simulate(PhantomConfig(seed=1, **cfg)).wm)
    assert not np.array_equal(a.wm, b.wm)
    assert len(a.bundles) == 7 and a.summary()["crossing_voxels"] > 20
