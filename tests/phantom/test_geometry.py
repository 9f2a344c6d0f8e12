"""Tubes: arc length, frames, point location, fanning directions."""

from __future__ import annotations

import numpy as np
import pytest

from difftract.phantom.geometry import Bundle, disc_positions, make_tube


def test_straight_tube_length_frame_and_location():
    tube = make_tube(Bundle("x", [[0, 0, 0], [20, 0, 0]], radius=(2.0,), thickness=(4.0,), normal=[0, 0, 1]))
    assert tube.length == pytest.approx(20.0, abs=1e-6)
    np.testing.assert_allclose(tube.tangent, np.tile([1, 0, 0], (len(tube.s), 1)), atol=1e-9)
    np.testing.assert_allclose(np.abs(tube.n2), np.tile([0, 0, 1], (len(tube.s), 1)), atol=1e-9)
    pts = np.array([[5, 1.9, 0], [5, 2.1, 0], [5, 0, 3.9], [5, 0, 4.1], [-0.5, 0, 0], [20.5, 0, 0], [10, 1.4, 2.8]])
    where = tube.locate(pts)
    np.testing.assert_array_equal(where["inside"], [True, False, True, False, False, False, True])
    np.testing.assert_allclose(where["s"][:4], 5.0, atol=0.1)
    np.testing.assert_allclose(np.abs(where["direction"][:4]), [[1, 0, 0]] * 4, atol=1e-9)


def test_rotation_minimising_frame_is_orthonormal_on_a_3d_curve():
    tube = make_tube(Bundle("h", [[0, 0, 0], [10, 5, 3], [15, 15, 10], [5, 25, 20]], radius=(2.0,)))
    for a, b in [("tangent", "n1"), ("tangent", "n2"), ("n1", "n2")]:
        np.testing.assert_allclose(np.einsum("ij,ij->i", getattr(tube, a), getattr(tube, b)), 0, atol=1e-9)
    for v in (tube.tangent, tube.n1, tube.n2):
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1, atol=1e-9)
    # Rotation-minimising: consecutive normals turn no more than the tangent does.
    turn_n = np.arccos(np.clip(np.einsum("ij,ij->i", tube.n1[1:], tube.n1[:-1]), -1, 1))
    turn_t = np.arccos(np.clip(np.einsum("ij,ij->i", tube.tangent[1:], tube.tangent[:-1]), -1, 1))
    assert np.all(turn_n <= turn_t + 1e-6)


def test_fibres_fan_and_directions_follow_them():
    tube = make_tube(Bundle("fan", [[0, 0, 0], [30, 0, 0]], radius=(1.0, 4.0), normal=[0, 0, 1]))
    fibre = tube.fibres(np.array([[1.0, 0.0]]))[0]
    assert fibre[0, 1] == pytest.approx(1.0) and fibre[-1, 1] == pytest.approx(4.0)
    expected = np.array([30.0, 3.0, 0.0]) / np.hypot(30, 3)
    where = tube.locate(fibre[100:101] * 0.999 + 0.0)  # a point on that outer fibre
    np.testing.assert_allclose(where["direction"][0], expected, atol=2e-3)
    assert where["inside"][0]


def test_disc_positions_fill_the_unit_disc_evenly():
    u = disc_positions(400, np.random.default_rng(0))
    r = np.linalg.norm(u, axis=1)
    assert r.max() < 1.0
    # Equal-area rings hold equal counts.
    counts = np.histogram(r**2, bins=4, range=(0, 1))[0]
    assert counts.min() >= 95 and counts.max() <= 105
