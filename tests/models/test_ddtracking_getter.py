"""DDTracking as the tracker's direction getter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from difftract.errors import ConfigError
from difftract.models.ddtracking.data import signal_sh
from difftract.models.ddtracking.features import neighbourhood
from difftract.models.ddtracking.getter import MIN_PADDED_ROWS, DDTrackingGetter
from difftract.models.ddtracking.inference import TrackingNetwork
from difftract.models.ddtracking.model import DDTracking, DDTrackingConfig
from difftract.phantom import PhantomConfig, simulate
from difftract.tracking.stopping import BinaryCriterion
from difftract.tracking.tracker import Tracker, TrackingParams

from .test_ddtracking_model import TINY


class _Scan:
    def __init__(self, p):
        from dipy.core.gradients import gradient_table

        self.data, self.mask, self.bvals, self.bvecs = p.data, p.mask, p.bvals, p.bvecs
        self.signal = p.data          # what signal_sh fits (a DWI's bounded signal, here the array)
        self.gtab = gradient_table(p.bvals, bvecs=p.bvecs)


@pytest.fixture(scope="module")
def phantom():
    return simulate(PhantomConfig(preset="crossing", seed=0, snr=None, ndirs=64, streamlines_per_bundle=20))


@pytest.fixture(scope="module")
def sh(phantom):
    return signal_sh(_Scan(phantom))


def model(variant="full"):
    torch.manual_seed(0)
    m = DDTracking(DDTrackingConfig(variant=variant, **TINY)).eval()
    for p in m.parameters():                       # random, not identity, FiLM: directions vary
        if p.dim() > 1:
            torch.nn.init.normal_(p, std=0.5)
    return m


def test_seed_directions_follow_the_fibre(phantom, sh):
    g = DDTrackingGetter(model(), sh)
    single = np.argwhere((phantom.fractions[..., 0] > 0.5) & (phantom.fractions[..., 1] < 0.05))[:50]
    assert len(single) > 10
    seeds = torch.as_tensor(single, dtype=torch.float64)
    dirs, index = g.seed_directions(seeds)
    truth = np.array([phantom.peaks[tuple(v)][0] for v in single[index.numpy()]])
    cos = np.abs((dirs.numpy() * truth).sum(axis=1))
    assert np.median(cos) > 0.97


def test_seed_directions_of_an_fodf_network_follow_the_fibre(phantom):
    """A network of the CSD fODF starts at the fODF's maximum, not at the minimum that suits the signal."""
    from difftract.models.ddtracking.data import fodf_sh

    torch.manual_seed(0)
    m = DDTracking(DDTrackingConfig(variant="full", input="fodf", **TINY)).eval()
    scan = _Scan(phantom)
    scan.mask = np.asarray(phantom.mask, dtype=bool)
    g = DDTrackingGetter(m, fodf_sh(scan))
    single = np.argwhere((phantom.fractions[..., 0] > 0.5) & (phantom.fractions[..., 1] < 0.05))[:50]
    dirs, index = g.seed_directions(torch.as_tensor(single, dtype=torch.float64))
    truth = np.array([phantom.peaks[tuple(v)][0] for v in single[index.numpy()]])
    assert len(index) > 10 and np.median(np.abs((dirs.numpy() * truth).sum(axis=1))) > 0.97


def test_init_backward_equals_stepping_the_reversed_forward_half(sh):
    m = model()
    g = DDTrackingGetter(m, sh)
    gen = torch.Generator().manual_seed(0)
    seeds = torch.tensor([[10.0, 10.0, 5.0], [12.0, 8.0, 4.0], [9.0, 9.0, 6.0]])
    fwd = seeds[:, None] + torch.arange(1, 5.0)[None, :, None] * torch.tensor([0.8, 0.3, 0.1])
    count = torch.tensor([4, 2, 0])
    fwd[1, 2:] = 0
    state = g.init_backward(seeds, -torch.ones(3, 3), fwd, count, gen)
    for s in range(3):
        n = int(count[s])
        q = torch.cat([fwd[s, :n].flip(0), seeds[s:s + 1]])            # f_n .. f_1, seed
        h = m.temporal.initial(1)
        for j in range(n):
            prev = torch.nn.functional.normalize((q[1] - q[0]) if j == 0 else (q[j] - q[j - 1]), dim=0)[None]
            with torch.no_grad():
                _, _, h = m.step(neighbourhood(g.sh, q[j:j + 1]), prev, h)
        torch.testing.assert_close(state["h"][s:s + 1], h, atol=1e-5, rtol=1e-5)
    assert torch.all(state["h"][2] == 0)                                  # did not move: fresh state


class Counting(DDTrackingGetter):
    """Counts the spatial encodings each init_backward computes (one worker thread: the counter is shared)."""

    replayed: list[int]

    def init_backward(self, *args, **kw):
        calls = []
        spatial = self.network.spatial
        self.network.spatial = lambda *a, **k: calls.append(1) or spatial(*a, **k)
        try:
            return super().init_backward(*args, **kw)
        finally:
            del self.network.spatial
            self.replayed.append(len(calls))


class Forgetting(Counting):
    def init(self, seeds, first_dirs, generator=None):
        state = super().init(seeds, first_dirs, generator)
        del state["z_log"]
        return state


@pytest.mark.parametrize("max_len_mm, integrator, stochastic", [
    (60, "euler", False), (8, "euler", False), (60, "euler", True), (60, "rk2", False)])
def test_the_backward_start_reuses_the_forward_halfs_encodings(phantom, sh, max_len_mm, integrator, stochastic):
    """With the forward half's log of z_t the replay runs the GRU alone, and the tracks are those of a
    replay that computes z_t again: the same points, rows and batches, equal to float64 rounding. Short
    streamlines end at the tracker's last buffer slot; RK2 logs one z_t per step, its first call's."""
    kw = dict(max_angle=90, steps=2 if stochastic else 1, stochastic=stochastic)
    with_log, without = Counting(model(), sh, **kw), Forgetting(model(), sh, **kw)
    with_log.replayed, without.replayed = [], []
    params = dict(max_len_mm=max_len_mm, integrator=integrator, dtype=torch.float64, workers=1)
    lines, again = track(with_log, phantom, seed=3, **params), track(without, phantom, seed=3, **params)
    assert lines and with_log.replayed and set(with_log.replayed) == {0}     # the replay computed no z_t
    assert max(without.replayed) > 0
    assert [len(x) for x in lines] == [len(x) for x in again]
    torch.testing.assert_close(torch.cat(lines), torch.cat(again), atol=1e-9, rtol=0)
    if max_len_mm == 8:
        assert max(len(x) for x in lines) == 4              # 8 mm / 2 mm: the cap (max_points) was reached


def test_the_log_is_used_kept_out_of_the_backward_half_and_freed(sh):
    g = Counting(model(), sh, max_angle=90)
    g.replayed = []
    seeds = torch.tensor([[10.0, 10.0, 5.0], [12.0, 8.0, 4.0]])
    fwd = seeds[:, None] + torch.arange(1, 4.0)[None, :, None] * torch.tensor([0.8, 0.3, 0.1])
    count = torch.tensor([3, 1])
    fwd[1, 1:] = 0

    def forward_half():
        state = g.init(seeds, torch.ones(2, 3))
        for i in range(4):                                 # the forward half's calls: f_0 .. f_3 of the rows alive
            rows = torch.nonzero(count >= i)[:, 0]
            points = torch.cat([seeds[:, None], fwd], dim=1)[rows, i]
            g.directions(points, torch.ones(len(rows), 3), {**state, "h": state["h"][rows]})
        return state

    state = forward_half()
    assert len(state["z_log"].entries) == 4
    logged = g.init_backward(seeds, -torch.ones(2, 3), fwd, count, forward_state=state)
    assert g.replayed == [0] and state["z_log"].entries == []          # used, then freed
    assert "z_log" not in logged                                       # the backward half logs nothing
    recomputed = g.init_backward(seeds, -torch.ones(2, 3), fwd, count)
    assert g.replayed == [0, 3]                                        # one per replay step (T = 3)
    torch.testing.assert_close(logged["h"], recomputed["h"], atol=1e-6, rtol=0)
    state = forward_half()                                             # the right length, entries of wrong sizes
    state["z_log"].entries.reverse()
    wrong = g.init_backward(seeds, -torch.ones(2, 3), fwd, count, forward_state=state)
    torch.testing.assert_close(wrong["h"], recomputed["h"], atol=1e-6, rtol=0)
    assert g.replayed[-1] > 0 and state["z_log"].entries == []


def track(getter, phantom, seed=0, n=30, max_len_mm=60, integrator="euler", **kw):
    criterion = BinaryCriterion(phantom.mask)
    params = TrackingParams(step_mm=2.0, min_len_mm=0, max_len_mm=max_len_mm, integrator=integrator)
    tracker = Tracker(getter, criterion, (2.0, 2.0, 2.0), params, chunk_size=16, **kw)
    seeds = torch.as_tensor(np.argwhere(phantom.wm)[:n], dtype=torch.float64)
    out = list(tracker.track(seeds, seed=seed))
    return [s for chunk in out for s in chunk.split()]


def test_tracking_is_reproducible(phantom, sh):
    det = DDTrackingGetter(model(), sh, max_angle=90)
    a, b = track(det, phantom), track(det, phantom, seed=5)
    assert len(a) > 0 and len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))   # no randomness
    sto = DDTrackingGetter(model(), sh, max_angle=90, steps=3, stochastic=True)
    s1, s2, s3 = track(sto, phantom, seed=1), track(sto, phantom, seed=1), track(sto, phantom, seed=2)
    assert len(s1) == len(s2) and all(torch.equal(x, y) for x, y in zip(s1, s2))
    assert len(s1) != len(s3) or not all(torch.equal(x, y) for x, y in zip(s1, s3))
    assert any(len(x) > 2 for x in s1)


@pytest.mark.parametrize("variant", ["temporal", "full"])
def test_float64_tracking_follows_float32(phantom, sh, variant):
    """The tracker moves the getter to float64 (its dense network rebuilt there): the same streamlines
    as in float32, up to float32 rounding of the points, over a few short streamlines."""
    g = DDTrackingGetter(model(variant), sh, max_angle=90)
    lines64, lines32 = track(g, phantom, n=8, dtype=torch.float64), track(g, phantom, n=8)
    assert lines64 and lines64[0].dtype == torch.float64
    assert [len(x) for x in lines64] == [len(x) for x in lines32]
    torch.testing.assert_close(torch.cat(lines64).float(), torch.cat(lines32), atol=1e-3, rtol=0)


def test_checks(sh):
    with pytest.raises(ConfigError, match="sampler"):
        DDTrackingGetter(model(), sh, steps=0)
    with pytest.raises(ConfigError, match="28 SH"):
        DDTrackingGetter(model(), sh[..., :15])
    with pytest.raises(ConfigError, match="Generator"):
        DDTrackingGetter(model(), sh, stochastic=True).init(torch.zeros(2, 3), torch.zeros(2, 3), None)


def test_anisotropic_voxels_move_along_the_networks_voxel_direction(phantom, sh):
    """The network speaks voxel space, the tracker mm: one step moves along the network's voxel direction."""
    m = model()
    sizes = (1.0, 1.0, 2.0)
    g = DDTrackingGetter(m, sh, max_angle=90, voxel_sizes=sizes)
    d = torch.nn.functional.normalize(torch.tensor([[1.0, 2.0, 3.0]]), dim=1)
    torch.testing.assert_close(g._to_mm(g._to_voxel(d)), d)
    seeds = torch.as_tensor(np.argwhere(phantom.wm)[:5], dtype=torch.float32)
    dirs0, index = g.seed_directions(seeds)
    x0 = seeds[index]
    state = g.init(x0, dirs0)
    with torch.no_grad():
        dirs, valid, _ = g.directions(x0, dirs0, state)
        c, v, _ = m.step(neighbourhood(g.sh, x0), g._to_voxel(dirs0), m.temporal.initial(len(x0)))
        expected = m.direction(c, v)
    move = dirs / torch.tensor(sizes)          # the tracker's move: dir / voxel size * step
    torch.testing.assert_close(torch.nn.functional.normalize(move, dim=1), expected, atol=1e-5, rtol=1e-5)


def recorded_rows(g: DDTrackingGetter) -> list[int]:
    """The row counts of ``g``'s network calls from now on (appended as they come)."""
    calls: list[int] = []
    network_step = g._step
    g._step = lambda points, *rest: calls.append(len(points)) or network_step(points, *rest)
    return calls


def blocked_steps(g: DDTrackingGetter, monkeypatch, seed: int, n: int = 50):
    """A step of ``g`` on ``n`` random rows, in blocks of ``block_rows`` and padded or not: the step's directions,
    validity, states and logged ``z_t``, the generator's next draws, and the row counts the network was called
    with."""
    rng = np.random.default_rng(seed)
    points = torch.as_tensor(rng.uniform(4, 12, (n, 3)), dtype=torch.float32)
    prev = torch.nn.functional.normalize(torch.as_tensor(rng.normal(size=(n, 3)), dtype=torch.float32), dim=-1)
    h0 = torch.as_tensor(rng.normal(size=tuple(g.network.initial(n).shape)), dtype=torch.float32)
    calls = recorded_rows(g)

    def step(block_rows: int, pad: bool = False):
        monkeypatch.setattr(TrackingNetwork, "pads_rows", property(lambda self: pad))
        g.block_rows = block_rows
        calls.clear()
        generator = torch.Generator().manual_seed(3)
        state = g.init(points, prev, generator)
        state["h"] = h0.clone()
        dirs, valid, new = g.directions(points, prev, state)
        return (dirs, valid, new["h"], state["z_log"].entries[0], torch.rand(4, generator=generator)), list(calls)

    return step


@pytest.mark.parametrize("stochastic", [False, True])
def test_a_step_in_blocks_of_rows_is_the_step_at_once(sh, stochastic, monkeypatch):
    """On a CPU the network takes a step's rows in blocks; the directions, states and logged ``z_t``
    are those of one call, and a stochastic step draws the same numbers from the generator."""
    step = blocked_steps(DDTrackingGetter(model(), sh, max_angle=90, steps=3, stochastic=stochastic), monkeypatch, 0)
    whole, rows = step(10_000)
    assert rows == [50]
    blocks, rows = step(7)
    assert rows == [7] * 7 + [1]
    for a, b in zip(whole, blocks):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert torch.equal(whole[-1], blocks[-1])             # the generator is left where one call leaves it


def forward_half(seed: int, S: int = 20, T: int = 5):
    """Seeds ``(S, 3)``, forward counts ``(S,)`` in 1..T and forward points ``(S, T, 3)`` (zero past the count)."""
    rng = np.random.default_rng(seed)
    seeds = torch.as_tensor(rng.uniform(6, 10, (S, 3)), dtype=torch.float32)
    count = torch.as_tensor(rng.integers(1, T + 1, S))
    fwd = seeds[:, None] + torch.arange(1, T + 1.0)[None, :, None] * torch.tensor([0.6, 0.3, 0.1])
    fwd[torch.arange(T)[None, :] >= count[:, None]] = 0
    return seeds, count, fwd


def replay(g, seeds, count, fwd, logged: bool):
    """init_backward's state, after the forward half's calls logging z_t when ``logged``; and that log."""
    (S, T), state, entries = fwd.shape[:2], None, []
    if logged:
        state = g.init(seeds, torch.ones(S, 3))
        for i in range(T + 1):
            rows = torch.nonzero(count >= i)[:, 0]
            points = torch.cat([seeds[:, None], fwd], dim=1)[rows, i]
            g.directions(points, torch.ones(len(rows), 3), {**state, "h": state["h"][rows]})
        entries = list(state["z_log"].entries)
    return g.init_backward(seeds, -torch.ones(S, 3), fwd, count, forward_state=state)["h"], entries


@pytest.mark.parametrize("logged", [False, True])
def test_the_backward_replay_in_blocks_is_the_replay_at_once(sh, logged):
    """init_backward runs the GRU (and, without a usable log, the encoder) in the same blocks."""
    g = DDTrackingGetter(model(), sh, max_angle=90)
    half = forward_half(1)

    def in_blocks(block_rows):
        g.block_rows = block_rows
        return replay(g, *half, logged)[0]

    torch.testing.assert_close(in_blocks(3), in_blocks(10_000), atol=1e-5, rtol=0)


@pytest.mark.parametrize("stochastic", [False, True])
def test_padded_blocks_give_the_rows_of_unpadded_ones(sh, stochastic, monkeypatch):
    """Where the network asks for it (bfloat16 products on a CPU), each block is padded to a power of two
    of at least MIN_PADDED_ROWS rows (at most block_rows) and cut back: the same directions, states and
    draws as without padding (float32 here, so that only the padding differs)."""
    step = blocked_steps(DDTrackingGetter(model(), sh, max_angle=90, steps=3, stochastic=stochastic), monkeypatch, 2)
    plain, rows = step(10_000)
    assert rows == [50]
    for block_rows, expected in ((10_000, [max(MIN_PADDED_ROWS, 64)]), (40, [40, 40]), (20, [20, 20, 20])):
        padded, rows = step(block_rows, pad=True)
        assert rows == expected
        assert [len(t) for t in padded[:4]] == [50] * 4
        for a, b in zip(plain, padded):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
        assert torch.equal(plain[-1], padded[-1])         # padding draws nothing


def test_bfloat16_products_track_as_float32_to_a_fraction_of_a_degree(sh):
    """``matmul_dtype=torch.bfloat16``: the large products' matrices in bfloat16, everything the tracker sees in
    float32, and each direction within the rounding of 8-bit mantissas (about 0.4% per product) of float32's."""
    m = model()
    g32 = DDTrackingGetter(m, sh, max_angle=90)
    g16 = DDTrackingGetter(m, sh, max_angle=90, matmul_dtype=torch.bfloat16)
    net = g16.network
    assert net.pads_rows and not g32.network.pads_rows
    assert net.conv[0].dtype == net.gru.layers[0][0].dtype == net.mlps[0].first[0].dtype == torch.bfloat16
    assert net.conv[1].dtype == torch.float32                            # biases and norms stay in float32
    rng = np.random.default_rng(4)
    n = 300
    points = torch.as_tensor(rng.uniform(3, 13, (n, 3)), dtype=torch.float32)
    prev = torch.nn.functional.normalize(torch.as_tensor(rng.normal(size=(n, 3)), dtype=torch.float32), dim=-1)
    d32, _, s32 = g32.directions(points, prev, g32.init(points, prev))
    d16, _, s16 = g16.directions(points, prev, g16.init(points, prev))
    assert d16.dtype == s16["h"].dtype == torch.float32
    angle = torch.rad2deg(torch.arccos((d32 * d16).sum(-1).clamp(-1, 1)))
    assert 0 < angle.median() < 1.0, angle.median()                      # rounded, but far below a tracking error
    # (this random network has points where its output nearly vanishes and the direction turns far on rounding)
    assert (s32["h"] - s16["h"]).abs().median() < 0.01
    assert g16.to("cpu", torch.float64).network.matmul_dtype == torch.bfloat16   # a copy keeps its products' dtype


def test_matmul_dtype_is_checked_and_only_for_ddtracking():
    from difftract.pipeline import TrackOptions

    assert TrackOptions(method="ddtracking", matmul_dtype="bfloat16").matmul_dtype == "bfloat16"
    with pytest.raises(ConfigError, match="--matmul-dtype must be one of float32, bfloat16"):
        TrackOptions(method="ddtracking", matmul_dtype="float16")
    with pytest.raises(ConfigError, match="--matmul-dtype only applies to --method ddtracking"):
        TrackOptions(method="det", matmul_dtype="bfloat16")


@pytest.mark.parametrize("logged", [False, True])
def test_the_backward_replay_in_padded_blocks_is_the_replay_at_once(sh, logged, monkeypatch):
    """init_backward's GRU (and, without a usable log, the encoder on a column slice of the spatial matrix) in
    padded blocks: the states of the replay at once (float32 products, so that only the padding differs)."""
    g = DDTrackingGetter(model(), sh, max_angle=90)
    half = forward_half(5)

    def padded(pad):
        monkeypatch.setattr(TrackingNetwork, "pads_rows", property(lambda self: pad))
        h, log = replay(g, *half, logged)
        # the log keeps its own rows, not the padded block they were cut from
        assert all(z.untyped_storage().nbytes() == z.numel() * z.element_size() for z in log)
        return h

    torch.testing.assert_close(padded(True), padded(False), atol=1e-5, rtol=0)


def test_bfloat16_getter_takes_no_rows_and_refuses_other_dtypes(sh):
    g = DDTrackingGetter(model(), sh, max_angle=90, matmul_dtype=torch.bfloat16)
    none = torch.zeros(0, 3)
    dirs, valid, _ = g.directions(none, none, g.init(none, none))
    assert dirs.shape == (0, 3) and valid.shape == (0,)
    with pytest.raises(ConfigError, match="products' dtype must be float32, float64 or bfloat16"):
        DDTrackingGetter(model(), sh, matmul_dtype=torch.int8)
