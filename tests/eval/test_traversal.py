"""Exact voxel traversal and scilpy-style endpoint lookup."""

from __future__ import annotations

import numpy as np

from difftract.eval.traversal import endpoint_voxels, segment_voxels, traversed_voxels


def _set(vox):
    return {tuple(v) for v in np.asarray(vox)}


def test_segment_crossing_a_voxel_without_a_point_in_it():
    # From the centre of (0,0,0) to the centre of (1,1,0), passing just above the shared corner:
    # the line y = x + 0.1 enters voxel (0,1,0) before (1,1,0), and never voxel (1,0,0).
    a, b = np.array([[0.0, 0.1, 0.0]]), np.array([[1.0, 1.1, 0.0]])
    assert _set(segment_voxels(a, b)) == {(0, 0, 0), (0, 1, 0), (1, 1, 0)}
    a, b = np.array([[0.0, -0.1, 0.0]]), np.array([[1.0, 0.9, 0.0]])
    assert _set(segment_voxels(a, b)) == {(0, 0, 0), (1, 0, 0), (1, 1, 0)}


def test_long_segment_visits_every_voxel_on_its_way():
    vox = traversed_voxels([np.array([[0.0, 0.0, 0.0], [7.0, 0.0, 0.0]])], (10, 3, 3))
    assert vox[:8, 0, 0].all() and vox.sum() == 8


def test_matches_dense_sampling_on_random_segments():
    rng = np.random.default_rng(3)
    a = rng.uniform(0, 6, size=(80, 3))
    b = a + rng.normal(scale=1.5, size=(80, 3))
    for i in range(len(a)):
        exact = _set(segment_voxels(a[i:i + 1], b[i:i + 1]))
        t = np.linspace(0, 1, 20001)[:, None]
        dense = _set(np.floor(a[i] + t * (b[i] - a[i]) + 0.5).astype(int))
        assert exact == dense, i


def test_off_grid_parts_are_dropped_and_single_points_count():
    sl = [np.array([[-3.0, 1.0, 1.0], [1.0, 1.0, 1.0]]), np.array([[2.0, 2.0, 2.0]])]
    vox = traversed_voxels(sl, (3, 3, 3))
    assert _set(np.argwhere(vox)) == {(0, 1, 1), (1, 1, 1), (2, 2, 2)}
    assert traversed_voxels([], (2, 2, 2)).sum() == 0


def test_endpoint_voxels_use_corner_origin_truncation_and_clip():
    pts = np.array([[0.49, 0.5, -0.49], [-0.51, 1.2, 9.7], [3.6, -7.0, 1.5]])
    np.testing.assert_array_equal(endpoint_voxels(pts, (4, 4, 4)), [[0, 1, 0], [0, 1, 3], [3, 0, 2]])


def test_segments_starting_on_a_face_include_their_start_voxel():
    # 3.5 belongs to voxel 4 (floor(p + 0.5)); the segment then runs down into voxel 3.
    vox = traversed_voxels([np.array([[3.5, 0.0, 0.0], [3.0, 0.0, 0.0]])], (6, 1, 1))
    assert _set(np.argwhere(vox)) == {(3, 0, 0), (4, 0, 0)}
    start = endpoint_voxels(np.array([[3.5, 0.0, 0.0]]), (6, 1, 1))[0]
    assert vox[tuple(start)]


def test_segments_along_faces_and_through_corners():
    along = traversed_voxels([np.array([[0.0, 0.5, 0.0], [3.0, 0.5, 0.0]])], (4, 2, 1))
    assert _set(np.argwhere(along)) == {(0, 1, 0), (1, 1, 0), (2, 1, 0), (3, 1, 0)}
    corner = traversed_voxels([np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 0.0]])], (2, 2, 1))
    assert {(0, 0, 0), (1, 1, 0)} <= _set(np.argwhere(corner))


def test_far_off_grid_points_are_clipped_not_sampled():
    sl = [np.array([[1.0, 1.0, 1.0], [1e9, 1.0, 1.0]]), np.array([[-1e9, -1e9, 5.0], [-2e9, 0.0, 5.0]])]
    vox = traversed_voxels(sl, (4, 3, 3))
    assert _set(np.argwhere(vox)) == {(1, 1, 1), (2, 1, 1), (3, 1, 1)}
