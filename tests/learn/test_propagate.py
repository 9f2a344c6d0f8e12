"""The fixed-shape differentiable propagator: the tracker's steps, frozen stops, gradients from the points
back to the field (gradcheck through Euler and RK4), soft-stop weights, checkpointing, truncation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dipy.data import default_sphere
from dipy.reconst.shm import sf_to_sh

from difftract.errors import ConfigError
from difftract.learn import propagate, propagate_both, tensor_peaks
from difftract.tracking.getters import PeakGetter, make_getter
from difftract.tracking.sh_field import SHField
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
        half = tracker._half(tracker.getter, seeds, dirs, None, budget=None)
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


# ----------------------------------------------------------------------------- gradients, soft stop
PEAK_SHAPE = (7, 3, 3)
PEAK_VOXELS = (1.0, 1.1, 0.9)
# every point (and the dropped stopping points) about 0.1 voxel from the mask's x = 1.5 and 4.5 borders:
# no stopping decision flips under gradcheck's perturbations
DIFF_SEEDS = torch.tensor([[2.8, 0.8, 1.1], [3.2, 1.3, 0.7], [3.6, 1.1, 1.4], [2.4, 0.6, 0.9]],
                          dtype=torch.float64)


def smooth_peaks(first=None):
    """A float64 peak field ``(7, 3, 3, 2, 3)``: a first peak along x bending smoothly in y and z
    (or ``first`` ``(7, 3, 3, 3)``), a second one near z that the 40-degree cone never follows."""
    g = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in PEAK_SHAPE], indexing="ij"), -1)
    x, y, z = g[..., 0], g[..., 1], g[..., 2]
    if first is None:
        first = torch.as_tensor(np.stack([np.ones_like(x), 0.15 * np.sin(0.7 * x + 0.3 * z),
                                          0.1 * np.cos(0.5 * y + 0.2 * x)], -1))
    second = torch.as_tensor(np.stack([0.05 * np.ones_like(x), np.zeros_like(x), np.ones_like(x)], -1))
    return torch.stack([first, 0.7 * second], dim=-2)


def peak_criterion():
    mask = np.zeros(PEAK_SHAPE, bool)
    mask[2:5] = True                               # the streamlines stop at x = 1.5 and 4.5 (rint)
    return BinaryCriterion(mask)


def peak_paths(getter, integrator="euler", soft_stop=None):
    """Both halves of a streamline from every seed of DIFF_SEEDS, 14 steps of 0.4 mm each way."""
    dirs, index = getter.seed_directions(DIFF_SEEDS)
    assert torch.equal(index, torch.arange(len(DIFF_SEEDS)))      # every seed has a direction
    return propagate_both(getter, DIFF_SEEDS, dirs, 14, step_mm=0.4, voxel_sizes=PEAK_VOXELS, integrator=integrator,
                          criterion=peak_criterion(), soft_stop=soft_stop)


@pytest.mark.parametrize("integrator", ["euler", "rk4"])
def test_gradients_flow_from_points_to_the_peak_field(integrator):
    peaks = smooth_peaks().requires_grad_(True)
    out = peak_paths(PeakGetter(peaks, 40), integrator)
    assert out.length.min() >= 3 and (out.length < 15).any()        # several steps, and stops to freeze at
    out.points.sum().backward()
    assert peaks.grad is not None and torch.isfinite(peaks.grad).all() and peaks.grad[..., 0, :].abs().sum() > 0

    def points(first):
        paths = peak_paths(PeakGetter(smooth_peaks(first), 40), integrator)
        assert torch.equal(paths.length, out.length)   # no stopping decision flipped by the perturbation
        return paths.points

    first = smooth_peaks()[..., 0, :].clone().requires_grad_(True)
    # a random projection v.J.u against central differences first: it fails fast, where gradcheck
    # computes the whole Jacobian for its message (minutes)
    gen = torch.Generator().manual_seed(1)
    u = torch.randn(first.shape, generator=gen, dtype=torch.float64)
    v = torch.randn(out.points.shape, generator=gen, dtype=torch.float64)
    (grad,) = torch.autograd.grad((points(first) * v).sum(), first)
    with torch.no_grad():
        numeric = ((points(first + 1e-6 * u) - points(first - 1e-6 * u)) * v).sum() / 2e-6
    assert abs((grad * u).sum() - numeric) < 1e-5 * (1 + abs(numeric))
    torch.manual_seed(0)
    assert torch.autograd.gradcheck(points, (first,), eps=1e-6, atol=1e-5, fast_mode=True)


def _det_getter():
    """DIPY's det rule on an SH field (lmax 8, legacy basis) of the same fibres as smooth_peaks."""
    first = smooth_peaks()[..., 0, :].numpy()
    first = first / np.linalg.norm(first, axis=-1, keepdims=True)
    odf = np.exp(20.0 * ((first @ default_sphere.vertices.T) ** 2 - 1))
    sh = sf_to_sh(odf, default_sphere, sh_order_max=8, basis_type="descoteaux07", legacy=True)
    return make_getter("det", sh=SHField(sh, legacy=True), max_angle=40)


@pytest.mark.filterwarnings("ignore:The legacy descoteaux07 SH basis:PendingDeprecationWarning")
@pytest.mark.parametrize("method", ["peak", "det"])
def test_soft_stop_weights_are_one_at_the_seed_and_decay_along_each_half(method):
    getter = PeakGetter(smooth_peaks(), 40) if method == "peak" else _det_getter()
    out = peak_paths(getter, soft_stop=0.2)
    w = out.weights
    assert w.shape == (8, 15)
    assert torch.all(w[:, 0] == 1) and torch.all(w > 0) and torch.all(w <= 1)
    assert torch.all(torch.diff(w, dim=1) <= 0)                       # never rises along a half
    assert torch.all(w[:, 1:][out.valid[:, 1:]] < 1)                   # every step away from the seed costs
    frozen = ~out.valid
    assert frozen.any() and torch.equal(w[frozen], w[torch.arange(8), out.length - 1][:, None].expand_as(w)[frozen])
    assert w.min() < 0.9                                               # near the border, the weight drops


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
