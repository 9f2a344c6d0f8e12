"""The fixed-shape differentiable propagator: the tracker's steps, frozen stops, checkpointing, truncation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from difftract.errors import ConfigError
from difftract.learn import propagate, propagate_both, tensor_peaks
from difftract.tracking.getters import PeakGetter
from difftract.tracking.stopping import ENDPOINT, BinaryCriterion
from difftract.tracking.tracker import Tracker, TrackingParams


def _getter(field, lt=None):
    return PeakGetter(tensor_peaks(field["lt"] if lt is None else lt, torch.as_tensor(field["mask"])), 60.0)


def _seeds(n=12):
    g = torch.Generator().manual_seed(1)
    seeds = torch.stack([torch.rand(n, generator=g) * 6 + 5, torch.rand(n, generator=g) * 4 + 3,
                         torch.full((n,), 1.5)], 1)
    return seeds, torch.tensor([[1.0, 0.0, 0.0]]).expand(n, 3).contiguous()


@pytest.mark.parametrize("integrator", ["euler", "rk4"])
def test_points_are_the_trackers_and_stops_freeze(straight_field, integrator):
    getter, crit = _getter(straight_field), BinaryCriterion(straight_field["mask"])
    seeds, dirs = _seeds()
    with torch.no_grad():
        paths = propagate(getter, seeds, dirs, 40, step_mm=0.5, voxel_sizes=(1, 1, 1), integrator=integrator,
                          criterion=crit)
        tracker = Tracker(getter, crit, (1, 1, 1), TrackingParams(step_mm=0.5, min_len_mm=0, max_len_mm=100,
                                                                  integrator=integrator))
        half = tracker._half(seeds, dirs, None, budget=None)
    assert paths.points.shape == (12, 41, 3)
    assert torch.equal(paths.length - 1, half.count.clamp(max=40))
    for s in range(12):
        mine = paths.points[s, 1:paths.length[s]]
        theirs = half.points[half.ids == s][: len(mine)]
        # exact: both call integrators.step row by row with elementwise arithmetic only (the peak
        # field is computed once, not per batch), so a row's points do not depend on which other
        # rows are in the batch. (The old atol=1e-6 was below one float32 ulp at |x| >= 8 anyway.)
        assert torch.equal(mine, theirs), s
        frozen = paths.points[s, paths.length[s] - 1:]
        assert torch.equal(frozen, frozen[:1].expand_as(frozen))     # stopped halves repeat their last point
    stopped = paths.length < 41
    assert stopped.any() and (paths.status[stopped] == ENDPOINT).all()   # they leave the mask along x
    ends = torch.round(paths.endpoints).long()
    assert torch.as_tensor(straight_field["mask"])[ends[:, 0], ends[:, 1], ends[:, 2]].all()   # the stop is dropped


def test_checkpointing_gives_the_same_gradient_and_truncation_a_shorter_one(straight_field):
    seeds, dirs = (t.double() for t in _seeds())
    crit = BinaryCriterion(straight_field["mask"])
    grads = {}
    for name, kwargs in (("plain", {}), ("checkpoint", {"checkpoint_every": 7}), ("truncate", {"truncate_every": 5}),
                         ("both", {"checkpoint_every": 7, "truncate_every": 5})):
        lt = straight_field["lt"].double().requires_grad_(True)
        paths = propagate_both(_getter(straight_field, lt), seeds, dirs, 30, step_mm=0.5, voxel_sizes=(1, 1, 1),
                               integrator="rk4", criterion=crit, **kwargs)
        (paths.points[..., 1] ** 2).sum().backward()
        grads[name] = lt.grad
    assert grads["plain"].abs().sum() > 0 and torch.isfinite(grads["plain"]).all()
    torch.testing.assert_close(grads["checkpoint"], grads["plain"], rtol=1e-9, atol=1e-12)
    assert not torch.allclose(grads["truncate"], grads["plain"])
    assert torch.isfinite(grads["truncate"]).all()
    torch.testing.assert_close(grads["both"], grads["truncate"], rtol=1e-9, atol=1e-12)   # windows of 5, not 7


def test_soft_stop_weights_fall_and_halves_are_laid_out(straight_field):
    seeds, dirs = _seeds(4)
    paths = propagate_both(_getter(straight_field), seeds, dirs, 30, step_mm=0.5, voxel_sizes=(1, 1, 1),
                           criterion=BinaryCriterion(straight_field["mask"]), soft_stop=0.1)
    w = paths.weights
    assert w.shape == (8, 31) and torch.all(w[:, 0] == 1) and torch.all(w[:, 1:] <= w[:, :-1] + 1e-7)
    assert torch.all(paths.points[4:, 1, 0] < seeds[:, 0]) and torch.all(paths.points[:4, 1, 0] > seeds[:, 0])
    ends = paths.streamline_ends()
    torch.testing.assert_close(ends[:, 0], paths.endpoints[4:])


def test_refuses_bad_input(straight_field):
    seeds, dirs = _seeds(3)
    getter = _getter(straight_field)
    kw = dict(step_mm=0.5, voxel_sizes=(1, 1, 1))
    with pytest.raises(ConfigError, match="integrator"):
        propagate(getter, seeds, dirs, 5, integrator="rk3", **kw)
    with pytest.raises(ConfigError, match="checkpoint_every"):
        propagate(getter, seeds, dirs, 5, checkpoint_every=0, **kw)
    with pytest.raises(ConfigError, match=r"\(S, 3\)"):
        propagate(getter, seeds, dirs[:2], 5, **kw)
    with pytest.raises(ConfigError, match="margin"):
        propagate(getter, seeds, dirs, 5, soft_stop=0.1, **kw)

    class Stateful:
        def init(self, seeds, dirs, generator):
            return {"h": torch.zeros(len(seeds))}

    with pytest.raises(ConfigError, match="stateless"):
        propagate(Stateful(), seeds, dirs, 5, **kw)
