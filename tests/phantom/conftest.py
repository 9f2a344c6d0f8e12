"""Checks shared by the phantom tests."""

import numpy as np
import pytest

from difftract.phantom.geometry import disc_positions, make_tube


def _locates_own_fibres(bundle, stride: int, label=None) -> None:
    """Points on known fibres of ``bundle`` (away from the caps) are found inside it, at their disc position."""
    tube = make_tube(bundle)
    u = disc_positions(30, np.random.default_rng(0)) * 0.95
    points = tube.fibres(u)[:, 5:-5:stride]
    where = tube.locate(points.reshape(-1, 3))
    expected = np.repeat(u, points.shape[1], axis=0)
    assert where["inside"].all() and np.abs(where["u"] - expected).max() < 0.05, label or bundle.name


@pytest.fixture
def locates_own_fibres():
    return _locates_own_fibres
