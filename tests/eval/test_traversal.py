"""Voxel traversal by the Tractometer's rule, and its endpoint lookup."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from difftract.eval.traversal import endpoint_voxels, streamline_voxels, traversed_voxels

DATA = Path(__file__).parent.parent / "data"


def _set(vox):
    return {tuple(v) for v in np.asarray(vox)}


def _voxels(points, shape):
    return _set(np.argwhere(traversed_voxels([np.asarray(points, dtype=np.float32)], shape)))


def test_segment_crossing_a_voxel_without_a_point_in_it():
    # From the centre of (0,0,0) to the centre of (1,1,0), passing just above the shared corner:
    # the line y = x + 0.1 enters voxel (0,1,0) before (1,1,0), and never voxel (1,0,0).
    assert _voxels([[0.0, 0.1, 0.0], [1.0, 1.1, 0.0]], (2, 2, 1)) == {(0, 0, 0), (0, 1, 0), (1, 1, 0)}
    assert _voxels([[0.0, -0.1, 0.0], [1.0, 0.9, 0.0]], (2, 2, 1)) == {(0, 0, 0), (1, 0, 0), (1, 1, 0)}


def test_long_segment_visits_every_voxel_on_its_way():
    vox = traversed_voxels([np.array([[0.0, 0.0, 0.0], [7.0, 0.0, 0.0]])], (10, 3, 3))
    assert vox[:8, 0, 0].all() and vox.sum() == 8


def test_matches_dense_sampling_on_random_segments():
    rng = np.random.default_rng(3)
    a = rng.uniform(0, 6, size=(80, 3)).astype(np.float32)
    b = (a + rng.normal(scale=1.5, size=(80, 3))).astype(np.float32)
    b = np.clip(b, -0.4, 9.4)
    for i in range(len(a)):
        exact = _voxels([a[i], b[i]], (10, 10, 10))
        t = np.linspace(0, 1, 20001)[:, None]
        dense = _set(np.floor(a[i] + t * (b[i] - a[i]) + 0.5).astype(int))
        assert exact == dense, i


def test_identical_to_scilpy_on_recorded_streamlines():
    """1,100 streamlines (random, axis-aligned along voxel faces, through voxel corners, repeated
    points) whose voxels scilpy 2.3.0's compute_tract_counts_map gave, one streamline at a time."""
    ref = np.load(DATA / "scilpy_traversal.npz")
    shape = tuple(int(v) for v in ref["shape"])
    sls = np.split(ref["points"], np.cumsum(ref["lengths"])[:-1])
    expected = set(zip(np.repeat(np.arange(len(sls)), ref["counts"]).tolist(), ref["voxels"].tolist()))
    sid, flat = streamline_voxels(sls, shape)
    assert set(zip(sid.tolist(), flat.tolist())) == expected


def test_off_grid_parts_are_dropped_and_single_points_count():
    sl = [np.array([[-3.0, 1.0, 1.0], [1.0, 1.0, 1.0]]), np.array([[2.0, 2.0, 2.0]])]
    vox = traversed_voxels(sl, (3, 3, 3))
    assert _set(np.argwhere(vox)) == {(0, 1, 1), (1, 1, 1), (2, 2, 2)}
    assert traversed_voxels([], (2, 2, 2)).sum() == 0


def test_far_off_grid_points_are_clipped_not_sampled():
    sl = [np.array([[1.0, 1.0, 1.0], [1e9, 1.0, 1.0]]), np.array([[-1e9, -1e9, 5.0], [-2e9, 0.0, 5.0]])]
    vox = traversed_voxels(sl, (4, 3, 3))
    assert _set(np.argwhere(vox)) == {(1, 1, 1), (2, 1, 1), (3, 1, 1)}


def test_segments_along_faces_take_the_upper_voxel_as_scilpy():
    # y = 0.5 is the face between voxels 0 and 1: scilpy's midpoint rule puts the segment in voxel 1
    assert _voxels([[0.0, 0.5, 0.0], [3.0, 0.5, 0.0]], (4, 2, 1)) == {(0, 1, 0), (1, 1, 0), (2, 1, 0), (3, 1, 0)}


def test_pairs_are_unique_per_streamline():
    sls = [np.array([[0.0, 0, 0], [0.2, 0, 0], [0.1, 0, 0], [1.0, 0, 0]]), np.array([[1.0, 0, 0], [1.0, 0, 0]])]
    sid, flat = streamline_voxels(sls, (2, 1, 1))
    assert sorted(zip(sid.tolist(), flat.tolist())) == [(0, 0), (0, 1), (1, 1)]


def test_endpoint_voxels_use_corner_origin_truncation_and_clip():
    pts = np.array([[0.49, 0.5, -0.49], [-0.51, 1.2, 9.7], [3.6, -7.0, 1.5]])
    np.testing.assert_array_equal(endpoint_voxels(pts, (4, 4, 4)), [[0, 1, 0], [0, 1, 3], [3, 0, 2]])
    # the corner shift happens in float32, as DIPY's to_corner: 0.49999997 + 0.5 rounds to 1.0
    np.testing.assert_array_equal(endpoint_voxels(np.array([[np.float32(0.49999997), 0, 0]]), (4, 1, 1)), [[1, 0, 0]])
