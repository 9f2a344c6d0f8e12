"""DDTracking's dense tracking step (:mod:`difftract.models.ddtracking.inference`) against the network."""

from __future__ import annotations

import pytest
import torch

from difftract.models.ddtracking.features import neighbourhood, samples
from difftract.models.ddtracking.inference import TrackingNetwork, conv_matrix
from difftract.models.ddtracking.model import VARIANTS, DDTracking, DDTrackingConfig
from difftract.tracking.interpolate import trilinear

from .test_ddtracking_model import TINY

# float64 throughout: the dense form sums the same products in another order (and folds GroupNorm's
# centring into a matrix), so the two agree to rounding, ~1e-15 of values of order 1-10; a wrong
# permutation, group or FiLM slice moves them by O(1)
ATOL = 1e-9


# the fast model's sizes: GroupNorm groups of 4 and 8 channels (TINY's are 1 and 2)
FAST = dict(conv_channels=16, mlp_hidden=128, z_dim=64, v_dim=64, gru_hidden=128, gru_layers=2, time_dim=128,
            denoiser_width=32)


def step(net: TrackingNetwork, channels_last, prev, h):
    """The getter's step: ``spatial`` then ``recur`` (``c``, ``v`` and the new state, as ``DDTracking.step``)."""
    z, v = net.spatial(channels_last)
    c, state = net.recur(z, prev, h)
    return c, v, state


def random_model(variant: str, one_head: bool = False, sizes: dict = TINY) -> DDTracking:
    """Every weight random, GroupNorm affines and FiLM included (the shipped zero-init FiLM would hide a slip)."""
    torch.manual_seed(0)
    m = DDTracking(DDTrackingConfig(variant=variant, one_head=one_head, **sizes)).double().eval()
    with torch.no_grad():
        for p in m.parameters():     # order-1 activations at any size: std 1.5 / sqrt(fan-in)
            p.normal_(0.0, 1.5 / p[0].numel() ** 0.5 if p.dim() > 1 else 0.3)
    return m


def inputs(m: DDTracking, n: int = 40):
    g = torch.Generator().manual_seed(1)
    c = m.config
    patches = torch.randn(n, c.n_coeffs, 3, 3, 3, generator=g, dtype=torch.float64)
    prev = torch.nn.functional.normalize(torch.randn(n, 3, generator=g, dtype=torch.float64), dim=1)
    h = 0.5 * torch.randn(n, c.gru_layers, c.gru_hidden, generator=g, dtype=torch.float64)
    return patches, prev, h


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("one_head", [False, True])
def test_dense_step_and_direction_equal_the_network(variant, one_head):
    check_equal(random_model(variant, one_head))


def test_dense_equals_the_network_at_the_fast_models_sizes():
    check_equal(random_model("full", sizes=FAST))


def test_float32_and_a_moved_copy_stay_within_float32_rounding():
    """Built from float64 and moved to float32 (as a getter's ``to`` does): the float32 network's own answer
    to ~1e-5 (directions are unit vectors; a few hundred float32 roundings of order-1 values)."""
    m64 = random_model("full", sizes=FAST)
    net = TrackingNetwork(m64).to("cpu", torch.float32)
    m = m64.float()
    patches, prev, h = (t.float() for t in inputs(m64))
    with torch.no_grad():
        c, v, _ = m.step(patches, prev, h)
        expected = m.direction(c, v)
        c2, v2, _ = step(net, patches.permute(0, 2, 3, 4, 1), prev, h)
        got = net.direction(c2, v2)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def check_equal(m: DDTracking) -> None:
    net = TrackingNetwork(m)
    patches, prev, h = inputs(m)
    channels_last = patches.permute(0, 2, 3, 4, 1)
    with torch.no_grad():
        c, v, state = m.step(patches, prev, h)
        c2, v2, state2 = step(net, channels_last, prev, h)
        torch.testing.assert_close(c2, c, atol=ATOL, rtol=0)
        torch.testing.assert_close(state2, state, atol=ATOL, rtol=0)
        z_alone, none = net.spatial(channels_last, local=False)     # the backward replay's call
        assert none is None
        torch.testing.assert_close(net.recur(z_alone, prev, h)[1], state, atol=ATOL, rtol=0)
        assert (v is None) == (v2 is None)
        if v is not None:
            torch.testing.assert_close(v2, v, atol=ATOL, rtol=0)
        for steps, stochastic in ((1, False), (4, False), (3, True)):
            expected = m.direction(c, v, steps, stochastic, torch.Generator().manual_seed(2))
            got = net.direction(c, v, steps, stochastic, torch.Generator().manual_seed(2))
            torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_dense_directions_are_not_trivially_equal():
    """The comparison above can fail: another network's directions differ by O(1)."""
    m = random_model("full")
    other = random_model("full")
    with torch.no_grad():
        other.denoiser.enc2.norm1.weight.mul_(-1.0)
    patches, prev, h = inputs(m)
    with torch.no_grad():
        c, v, _ = m.step(patches, prev, h)
        gap = (TrackingNetwork(other).direction(c, v) - m.direction(c, v)).abs().max()
    assert gap > 0.1


def test_conv_matrix_is_the_convolution():
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(4, 5, 3, padding=1).double()
    x = torch.randn(6, 4, 3, 3, 3, dtype=torch.float64)
    W, b = conv_matrix(conv, (3, 3, 3))
    torch.testing.assert_close(torch.addmm(b, x.reshape(6, -1), W), conv(x).reshape(6, -1), atol=1e-12, rtol=0)


def test_neighbourhood_is_trilinear_at_every_offset_edges_and_outside_included():
    """The separable 4x4x4 interpolation reads what 27 trilinear lookups read, edges and off-grid zeros too."""
    g = torch.Generator().manual_seed(3)
    sh = torch.randn(5, 6, 4, 7, generator=g, dtype=torch.float64)
    points = torch.rand(300, 3, generator=g, dtype=torch.float64) * torch.tensor([7.0, 8.0, 6.0]) - 1.5
    edges = [[-0.5, 5.49, 3.0], [4.4999, 0.0, -0.4999], [0.5, 0.5, 0.5],
             [4.5, 5.5, 3.5], [3.5, 4.5, 2.5], [-1.5, -0.5, 0.5]]     # exactly on the upper and lower limits
    points[:len(edges)] = torch.tensor(edges, dtype=torch.float64)
    feats = neighbourhood(sh, points)
    offsets = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    where = points[:, None, None, None] + torch.stack(torch.meshgrid(offsets, offsets, offsets, indexing="ij"), -1)
    expected, _ = trilinear(sh, where.reshape(-1, 3))
    expected = expected.reshape(len(points), 3, 3, 3, -1).permute(0, 4, 1, 2, 3)
    assert (expected == 0).any() and (expected != 0).any()
    atol = 16 * torch.finfo(torch.float64).eps * float(sh.abs().max())   # rounding of the last few bits
    torch.testing.assert_close(feats, expected, rtol=0, atol=atol)
    torch.testing.assert_close(samples(sh, points), feats.permute(0, 2, 3, 4, 1), rtol=0, atol=0)


def test_the_dense_copy_keeps_the_weights_it_was_built_from():
    m = random_model("full")
    net = TrackingNetwork(m)
    patches, prev, h = inputs(m)
    channels_last = patches.permute(0, 2, 3, 4, 1)
    with torch.no_grad():
        before = net.direction(*step(net, channels_last, prev, h)[:2])
        for p in m.parameters():
            p.mul_(2.0)
        after = net.direction(*step(net, channels_last, prev, h)[:2])
    assert torch.equal(before, after)


def test_no_points_no_error():
    m = random_model("full")
    sh = torch.zeros(4, 4, 4, m.config.n_coeffs, dtype=torch.float64)
    none = samples(sh, torch.zeros(0, 3, dtype=torch.float64))
    assert none.shape == (0, 3, 3, 3, m.config.n_coeffs)
    net = TrackingNetwork(m)
    c, v, h = step(net, none, torch.zeros(0, 3, dtype=torch.float64), net.initial(0))
    assert c.shape == (0, m.config.gru_hidden) and net.direction(c, v).shape == (0, 3)


def test_the_dense_mlps_are_the_modules_bit_for_bit_in_float32():
    """float32 tracks are unchanged by the bfloat16 option: each spatial MLP runs as F.linear does."""
    import copy

    m = random_model("full", sizes=FAST).float()
    net = TrackingNetwork(m)
    x = torch.randn(64, net.width, generator=torch.Generator().manual_seed(2))
    for dense, branch in zip(net.mlps, [m.spatial.z, m.spatial.v]):
        assert torch.equal(dense(x), copy.deepcopy(branch.mlp[2:])(x))
