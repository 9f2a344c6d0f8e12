"""The batched tracker: streamline-by-streamline equivalence with DIPY 1.12, DIPY's length and
``return_all`` rules, chunking, precision, seeds, inference only (no graph), integrators and
configuration errors (``docs/dev/dipy_tracking.md``). Gradients and soft stopping are
:func:`difftract.learn.propagate`'s (``tests/learn/test_propagate.py``)."""

from __future__ import annotations

import functools
import math
from collections import defaultdict

import numpy as np
import pytest
import torch
from dipy.data import default_sphere
from dipy.reconst.shm import sf_to_sh
from dipy.tracking.stopping_criterion import BinaryStoppingCriterion, ThresholdStoppingCriterion
from dipy.tracking.tracker import closestpeak_tracking, deterministic_tracking

from difftract.errors import ConfigError
from difftract.threads import usable_cores
from difftract.tracking.getters import make_getter
from difftract.tracking.sh_field import SHField
from difftract.tracking.stopping import BinaryCriterion, ThresholdCriterion
from difftract.tracking.tracker import Tracker, TrackingParams

# DIPY's trackers assume the legacy descoteaux07 basis, which DIPY 1.12 warns about
pytestmark = pytest.mark.filterwarnings("ignore:The legacy descoteaux07 SH basis:PendingDeprecationWarning")

N = 12
# anisotropic voxels and a translation: DIPY takes seeds in world mm and returns world mm
AFFINE = np.array([[2.0, 0, 0, -11.0], [0, 2.0, 0, 7.0], [0, 0, 2.5, 3.0], [0, 0, 0, 1]])
# strongly anisotropic: the backward half's first "previous direction" (the normalised voxel-space
# first step, not the seed direction) changes the narrow-cone results
STRONG_AFFINE = np.array([[1.0, 0, 0, -4.0], [0, 1.2, 0, 2.0], [0, 0, 3.0, 1.0], [0, 0, 0, 1]])
VOX = np.linalg.norm(AFFINE[:3, :3], axis=0)
FA_THRESHOLD = 0.3


def world(p: np.ndarray, affine: np.ndarray = AFFINE) -> np.ndarray:
    return p @ affine[:3, :3].T + affine[:3, 3]


def fibre_odf(directions: np.ndarray, kappa: float = 20.0) -> np.ndarray:
    """``exp(k((v.d)^2 - 1))`` on DIPY's default sphere for fibre directions ``(..., 3)``."""
    return np.exp(kappa * ((directions @ default_sphere.vertices.T) ** 2 - 1))


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@functools.lru_cache(maxsize=None)
def curved_field():
    """A 12^3 SH field (lmax 8, legacy basis): a bending fibre, a sharp 70-degree turn (where halves
    fail to find a direction) and a second fibre crossing it in a column; an ellipsoid mask and a
    smooth FA-like map; 60 random seeds (voxel coordinates), some near or outside the mask."""
    g = np.stack(np.meshgrid(*[np.arange(N, dtype=float)] * 3, indexing="ij"), -1)
    x, y, z = g[..., 0], g[..., 1], g[..., 2]
    theta = 0.5 * (y - 5.5) / 5.5 + 0.3 * (x - 5.5) / 5.5 + 1.2 * (x > 7.5) * (z > 5)
    d1 = unit(np.stack([np.cos(theta), np.sin(theta), 0.2 + 0.1 * np.sin(z)], -1))
    phi = 0.4 * (x - 5.5) / 5.5
    d2 = unit(np.stack([np.full_like(phi, 0.2), np.sin(phi), np.cos(phi)], -1))
    w2 = np.exp(-((x - 5) ** 2 + (y - 6) ** 2) / 6.0)
    odf = fibre_odf(d1) + 0.9 * w2[..., None] * fibre_odf(d2)
    sh = sf_to_sh(odf, default_sphere, sh_order_max=8)            # descoteaux07, legacy (DIPY's default)
    r = np.linalg.norm((g - 5.6) * [1.0, 1.2, 1.0], axis=-1)
    mask = r < 5.3
    fa = np.clip(1.0 - r / 7.0, 0, 1)
    seeds = np.random.default_rng(0).uniform(1, 10, size=(60, 3))
    return sh, mask, fa, seeds


def criteria(kind: str, mask, fa):
    if kind == "binary":
        return BinaryStoppingCriterion(mask.astype(float)), BinaryCriterion(mask)
    return ThresholdStoppingCriterion(fa, FA_THRESHOLD), ThresholdCriterion(fa, FA_THRESHOLD)


def dipy_tracks(method, kind, *, step, max_angle, min_len, max_len, return_all=True, affine=AFFINE):
    """DIPY's streamlines (world mm) grouped by seed index, in DIPY's order."""
    sh, mask, fa, seeds = curved_field()
    sc, _ = criteria(kind, mask, fa)
    seeds_world = world(seeds, affine)
    kw = dict(sh=sh, step_size=step, max_angle=max_angle, min_len=min_len, max_len=max_len,
              return_all=return_all, save_seeds=True)
    if method == "det":
        out = deterministic_tracking(seeds_world, sc, affine, random_seed=1, nbr_threads=1, **kw)
    else:
        out = closestpeak_tracking(seeds_world, sc, affine, **kw)
    by_seed = defaultdict(list)
    for streamline, seed in out:
        streamline = np.asarray(streamline)
        if method == "closest" and len(streamline) < int(min_len / step):
            continue            # DIPY's LocalTracking returns every length when return_all
        distance = np.linalg.norm(seeds_world - seed, axis=1)
        assert distance.min() < 1e-9
        by_seed[int(distance.argmin())].append(streamline)
    return dict(by_seed)


def our_tracks(method, kind, *, step, max_angle, min_len, max_len, return_all=True, affine=AFFINE):
    sh, mask, fa, seeds = curved_field()
    _, sc = criteria(kind, mask, fa)
    getter = make_getter(method, sh=SHField(sh, legacy=True), max_angle=max_angle)
    params = TrackingParams(step_mm=step, min_len_mm=min_len, max_len_mm=max_len, return_all=return_all)
    tracker = Tracker(getter, sc, np.linalg.norm(affine[:3, :3], axis=0), params, dtype=torch.float64)
    by_seed = defaultdict(list)
    for chunk in tracker.track(torch.as_tensor(seeds)):
        for s, i in zip(chunk.split(), chunk.seed_index.tolist()):
            by_seed[i].append(world(s.numpy(), affine))
    return dict(by_seed)


def assert_same_tracks(ours: dict, theirs: dict, tol: float = 1e-9):
    """Paired by seed and rank: same streamlines per seed, same point counts, points within ``tol`` mm."""
    problems = []
    for i in sorted(set(ours) | set(theirs)):
        a, b = ours.get(i, []), theirs.get(i, [])
        if len(a) != len(b):
            problems.append(f"seed {i}: {len(a)} streamlines (ours) vs {len(b)} (DIPY), "
                            f"lengths {[len(s) for s in a]} vs {[len(s) for s in b]}")
            continue
        for rank, (p, q) in enumerate(zip(a, b)):
            if p.shape != q.shape:
                problems.append(f"seed {i} rank {rank}: {len(p)} points (ours) vs {len(q)} (DIPY)")
            elif np.abs(p - q).max() >= tol:
                problems.append(f"seed {i} rank {rank}: max |diff| {np.abs(p - q).max():.3g} mm")
    assert not problems, "\n".join(problems)
    assert sum(map(len, ours.values())) == sum(map(len, theirs.values()))


# ----------------------------------------------------------------------------- 1. DIPY equivalence
@pytest.mark.parametrize("affine,max_angle", [(AFFINE, 35), (STRONG_AFFINE, 8)], ids=["mild", "strong-narrow"])
@pytest.mark.parametrize("kind", ["binary", "threshold"])
@pytest.mark.parametrize("method", ["det", "closest"])
def test_matches_dipy_streamline_by_streamline(method, kind, affine, max_angle):
    cfg = dict(step=0.5, max_angle=max_angle, min_len=2, max_len=60, affine=affine)
    theirs = dipy_tracks(method, kind, **cfg)
    ours = our_tracks(method, kind, **cfg)
    assert_same_tracks(ours, theirs)
    lengths = [len(s) for v in theirs.values() for s in v]
    assert len(theirs) >= 20 and max(lengths) > 2 * min(lengths)          # a non-trivial comparison
    if method == "closest":                                                # the crossing: 2 peaks at some seeds
        assert any(len(v) >= 2 for v in theirs.values())


# ----------------------------------------------------------------------------- 2. length rule


@pytest.mark.parametrize("step,min_len,max_len,kind", [
    (0.5, 7, 14, "binary"),
    (0.5, 2, 12, "binary"),
    (1.0, 2, 10, "threshold"),
    (0.3, 2, 17, "threshold"),
    (0.5, 2, 12, "threshold"),
    (0.5, 2, 10, "binary"),
    # not compared: fractional lengths. DIPY's det/prob truncate them to whole mm first (a C int),
    # difftract does not (int(12.75 / 0.5) = 25 points where DIPY has int(12 / 0.5) = 24).
])
def test_length_rule_matches_dipy(step, min_len, max_len, kind):
    """Streamlines over ``max_len`` are discarded (unless a half ran out of buffer); ``n >= min points``; as DIPY."""
    cfg = dict(step=step, max_angle=35)
    theirs = dipy_tracks("det", kind, min_len=min_len, max_len=max_len, **cfg)
    ours = our_tracks("det", kind, min_len=min_len, max_len=max_len, **cfg)
    long_ = our_tracks("det", kind, min_len=0, max_len=60, **cfg)
    assert_same_tracks(ours, theirs)
    max_points, min_points = int(int(max_len) / step), int(int(min_len) / step)   # DIPY: C int lengths
    short = discarded = 0
    for i, (full,) in long_.items():              # det: one streamline per seed
        if len(full) < min_points:
            assert i not in ours
            short += 1
        elif len(full) < max_points:
            np.testing.assert_array_equal(ours[i][0], full)   # unchanged by the length limits
        elif i not in ours:
            discarded += 1
        else:
            # DIPY's buffer rule: a half that runs out of buffer keeps max_points - 2 points, and the
            # streamline survives when the other half adds at most one (a window of the long one)
            (s,) = ours[i]
            assert max_points - 1 <= len(s) <= max_points
            assert any(np.array_equal(s, full[k:k + len(s)]) for k in range(len(full) - len(s) + 1))
    assert discarded > 0 and len(ours) > 5 and (short > 0 or min_len < 7)
    assert all(min_points <= len(s) <= max_points for (s,) in ours.values())


@pytest.mark.parametrize("max_len", [3, 4])
def test_one_forward_step_and_an_exhausted_backward_half_is_kept_as_dipy(max_len):
    """Seeds along a straight fibre near the mask's edge: the forward half stops after one step while
    the backward half runs out of buffer, giving exactly ``max_points`` points, which DIPY keeps."""
    sh, fibre, mask = straight_field()
    seeds = 5.5 + np.linspace(-6, 6, 49)[:, None] * fibre
    seeds = seeds[(seeds > 1.6).all(axis=1) & (seeds < 9.4).all(axis=1)]
    out = deterministic_tracking(world(seeds), BinaryStoppingCriterion(mask.astype(float)), AFFINE, sh=sh,
                                 step_size=0.5, max_angle=30, min_len=0, max_len=max_len, random_seed=1,
                                 nbr_threads=1, save_seeds=True)
    theirs = {int(np.linalg.norm(world(seeds) - q, axis=1).argmin()): [np.asarray(s)] for s, q in out}
    max_points = int(max_len / 0.5)
    assert any(len(s) == max_points and np.array_equal(s[max_points - 2], world(seeds[i]))
               for i, (s,) in theirs.items())      # the case: seed second to last
    tracker = Tracker(make_getter("det", sh=SHField(sh, legacy=True), max_angle=30), BinaryCriterion(mask), VOX,
                      TrackingParams(step_mm=0.5, min_len_mm=0, max_len_mm=max_len), dtype=torch.float64)
    ours = defaultdict(list)
    for chunk in tracker.track(torch.as_tensor(seeds)):
        for s, i in zip(chunk.split(), chunk.seed_index.tolist()):
            ours[i].append(world(s.numpy()))
    assert_same_tracks(dict(ours), theirs)


# ----------------------------------------------------------------------------- 3. return_all
@pytest.mark.parametrize("kind", ["binary", "threshold"])
@pytest.mark.parametrize("method", ["det", "closest"])
def test_return_all_false_keeps_streamlines_stopped_at_both_ends(method, kind):
    cfg = dict(step=0.5, max_angle=35, min_len=2, max_len=60)
    theirs = dipy_tracks(method, kind, return_all=False, **cfg)
    ours = our_tracks(method, kind, return_all=False, **cfg)
    assert_same_tracks(ours, theirs)
    everything = our_tracks(method, kind, return_all=True, **cfg)
    n_some, n_all = sum(map(len, ours.values())), sum(map(len, everything.values()))
    assert 0 < n_some < n_all - 5                 # the sharp turn makes some halves fail
    for i, streamlines in ours.items():           # a subset of return_all=True's output
        for s in streamlines:
            assert any(s.shape == t.shape and np.array_equal(s, t) for t in everything[i])


# ----------------------------------------------------------------------------- 4. chunks, prob
def flat(chunks):
    """``(points, lengths, seed_index)`` of all chunks together."""
    chunks = list(chunks)
    return (torch.cat([c.points for c in chunks]), torch.cat([c.lengths for c in chunks]),
            torch.cat([c.seed_index for c in chunks]))


@pytest.mark.parametrize("method", ["det", "closest"])
def test_classical_results_do_not_depend_on_the_chunk_size(method):
    sh, mask, fa, seeds = curved_field()
    getter = make_getter(method, sh=SHField(sh, legacy=True), max_angle=35)
    params = TrackingParams(step_mm=0.5, min_len_mm=2, max_len_mm=60)
    results = [flat(Tracker(getter, BinaryCriterion(mask), VOX, params, dtype=torch.float64,
                            chunk_size=k).track(torch.as_tensor(seeds[:24]))) for k in (1, 7, 1000)]
    assert len(results[0][1]) > 12
    # exact, although the pmf (coeffs @ B, a batched matmul) may round differently per chunk size: the
    # points are seeds plus step x chosen sphere vertex, so an ulp in the pmf only matters at an exact
    # argmax tie (none in this smooth field), and a tolerance would not help there (the path forks by a step)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


@pytest.mark.parametrize("method", ["det", "prob"])
def test_worker_threads_give_the_single_threads_streamlines(method):
    """Chunks tracked side by side on worker threads: the same streamlines in the same order, for the
    deterministic rule and for the random one (each chunk draws from its own generator)."""
    sh, mask, fa, seeds = curved_field()
    getter = make_getter(method, sh=SHField(sh, legacy=True), max_angle=35)
    params = TrackingParams(step_mm=0.5, min_len_mm=2, max_len_mm=60)
    threads = torch.get_num_threads()

    def run(workers):
        tracker = Tracker(getter, BinaryCriterion(mask), VOX, params, chunk_size=5, workers=workers)
        assert tracker.workers == min(workers, usable_cores())     # never more threads than cores
        return flat(tracker.track(torch.as_tensor(seeds), seed=11))

    one, two = run(1), run(2)
    assert len(one[1]) > 30
    for a, b in zip(one, two):
        assert torch.equal(a, b)
    assert torch.get_num_threads() == threads          # the workers' single-threaded ops are undone


def test_stopping_early_leaves_no_worker_running_and_restores_the_threads():
    sh, mask, fa, seeds = curved_field()
    tracker = Tracker(make_getter("det", sh=SHField(sh, legacy=True), max_angle=35), BinaryCriterion(mask), VOX,
                      TrackingParams(step_mm=0.5, min_len_mm=2, max_len_mm=60), chunk_size=2, workers=2)
    threads = torch.get_num_threads()
    chunks = tracker.track(torch.as_tensor(seeds))
    first = next(chunks)
    assert torch.get_num_threads() == threads        # between chunks the consumer keeps its threads
    chunks.close()                                   # the consumer stops after one chunk of 30
    assert len(first) <= 2 and torch.get_num_threads() == threads
    assert not any(t.name.startswith("difftract-track") for t in __import__("threading").enumerate())


@functools.lru_cache(maxsize=None)
def straight_field(shape=(N, N, N), baseline=0.0):
    """One straight fibre along a default-sphere vertex (no argmax ties): SH, its direction, a box mask."""
    v = default_sphere.vertices
    fibre = v[np.argmax(np.abs(v @ unit(np.array([1.0, 0.4, 0.2]))))]
    sh = sf_to_sh(np.broadcast_to(fibre_odf(fibre) + baseline, shape + (len(v),)), default_sphere, sh_order_max=8)
    mask = np.zeros(shape, bool)
    mask[2:-2, 2:-2, 2:-2] = True
    return sh, fibre, mask


def test_probabilistic_tracking_is_seeded_stays_in_the_mask_and_follows_the_field():
    sh, fibre, mask = straight_field()
    vox = np.array([1.0, 1.25, 1.5])
    max_angle = 12                                 # narrower than the thresholded pmf (about 20 degrees)
    seeds = torch.as_tensor(np.random.default_rng(1).uniform(3, 8, size=(40, 3)))
    getter = make_getter("prob", sh=SHField(sh, legacy=True), max_angle=max_angle)
    params = TrackingParams(step_mm=0.5, min_len_mm=1, max_len_mm=40)

    def run(seed, chunk_size=16):
        return flat(Tracker(getter, BinaryCriterion(mask), vox, params, dtype=torch.float64,
                            chunk_size=chunk_size).track(seeds, seed=seed))

    a, b, c = run(3), run(3), run(4)
    for x, y in zip(a, b):
        assert torch.equal(x, y)                  # same seed and chunk size: the same streamlines
    assert not (a[0].shape == c[0].shape and torch.equal(a[0], c[0]))     # another seed: others
    det = flat(Tracker(make_getter("det", sh=SHField(sh, legacy=True), max_angle=max_angle), BinaryCriterion(mask),
                       vox, params, dtype=torch.float64).track(seeds))
    assert not (a[0].shape == det[0].shape and torch.equal(a[0], det[0]))  # really random

    points, lengths, seed_index = a
    assert len(lengths) > 30 and lengths.min() >= 2
    voxel = torch.round(points).long()
    assert torch.as_tensor(mask)[voxel[:, 0], voxel[:, 1], voxel[:, 2]].all()  # every point in the mask
    along, turns = [], []
    for s, i in zip(torch.split(points, lengths.tolist()), seed_index.tolist()):
        steps = unit(torch.diff(s, dim=0).numpy() * vox)         # mm: the chosen sphere vertices
        np.testing.assert_allclose(np.linalg.norm(torch.diff(s, dim=0).numpy() * vox, axis=1), 0.5, rtol=1e-9)
        along.append(np.abs(steps @ fibre))
        (k,) = torch.nonzero((s == seeds[i]).all(dim=1))[:, 0].tolist()
        cos = (steps[1:] * steps[:-1]).sum(axis=1)               # consecutive steps, signed
        turns.append(np.delete(cos, k - 1) if k > 0 else cos)    # not across the seed
    along, turns = np.concatenate(along), np.concatenate(turns)
    field = SHField(sh, legacy=True)
    allowed = field.thresholded(field.pmf(torch.tensor([[5.0, 5.0, 5.0]], dtype=torch.float64)))[0] > 0
    assert along.min() >= np.abs(field.vertices[allowed].numpy() @ fibre).min() - 1e-9   # pmf_threshold
    assert along.mean() > 0.95
    assert along.mean() < 1 - 1e-6               # not a deterministic walk along the fibre
    assert turns.min() >= math.cos(math.radians(max_angle)) - 1e-9    # DIPY's cone: |cos| >= cos(max_angle)
    assert turns.mean() < 1 - 1e-6                                   # it does turn


def test_probabilistic_draws_skip_values_under_the_pmf_threshold():
    """An isotropic floor (about 10% of the peak) under the relative pmf_threshold (30%) is never drawn."""
    sh, fibre, mask = straight_field(baseline=0.08)
    field = SHField(sh, legacy=True, pmf_threshold=0.3)
    allowed = field.thresholded(field.pmf(torch.tensor([[5.0, 5.0, 5.0]], dtype=torch.float64)))[0] > 0
    seeds = torch.as_tensor(np.random.default_rng(3).uniform(3, 8, size=(30, 3)))
    tracker = Tracker(make_getter("prob", sh=field, max_angle=60), BinaryCriterion(mask), [1.0, 1.0, 1.0],
                      TrackingParams(step_mm=0.5, min_len_mm=1, max_len_mm=40), dtype=torch.float64)
    points, lengths, _ = flat(tracker.track(seeds, seed=5))
    steps = torch.cat([torch.diff(s, dim=0) for s in torch.split(points, lengths.tolist())]).numpy()
    along = np.abs(unit(steps) @ fibre)
    lobe = np.abs(field.vertices[allowed].numpy() @ fibre).min()
    assert len(along) > 300 and lobe > 0.8            # the floor is thresholded away
    assert along.min() >= lobe - 1e-9


# ----------------------------------------------------------------------------- 5. float32
def test_float32_default_agrees_with_float64_on_a_straight_field():
    sh, fibre, mask = straight_field()
    seeds = torch.as_tensor(np.random.default_rng(2).uniform(2.5, 8.5, size=(30, 3)))
    getter = make_getter("det", sh=SHField(sh, legacy=True), max_angle=30)
    params = TrackingParams(step_mm=0.5, min_len_mm=1, max_len_mm=40)
    p32, n32, i32 = flat(Tracker(getter, BinaryCriterion(mask), VOX, params).track(seeds))
    p64, n64, i64 = flat(Tracker(getter, BinaryCriterion(mask), VOX, params, dtype=torch.float64).track(seeds))
    assert p32.dtype == torch.float32 and p64.dtype == torch.float64
    assert len(n64) == len(seeds) and n64.min() > 5
    assert torch.equal(n32, n64) and torch.equal(i32, i64)
    assert (p32.double() - p64).abs().max() < 1e-3


# ----------------------------------------------------------------------------- 6. seeds
@pytest.mark.parametrize("method", ["det", "closest"])
def test_seeds_off_the_grid_give_nothing_and_streamlines_are_in_seed_order(method):
    sh, mask, fa, seeds = curved_field()
    inside = torch.as_tensor(seeds[:12])
    off = torch.tensor([[-3.0, 5, 5], [5, 14, 5], [-0.6, 5, 5], [5, 5, 11.5], [40, -2, 3]], dtype=torch.float64)
    order = torch.randperm(len(inside) + len(off), generator=torch.Generator().manual_seed(0))
    all_seeds = torch.cat([inside, off])[order]
    is_off = order >= len(inside)
    getter = make_getter(method, sh=SHField(sh, legacy=True), max_angle=35)
    tracker = Tracker(getter, BinaryCriterion(mask), VOX, TrackingParams(step_mm=0.5, min_len_mm=0, max_len_mm=60),
                      dtype=torch.float64, chunk_size=4)
    chunks = list(tracker.track(all_seeds))
    points, lengths, seed_index = flat(chunks)
    assert len(chunks) == math.ceil(len(all_seeds) / 4)
    assert not is_off[seed_index].any()                       # no streamline from a seed off the grid
    assert set(seed_index.tolist()) == set(torch.nonzero(~is_off)[:, 0].tolist())
    assert torch.all(torch.diff(seed_index) >= 0)             # seed order (closest: several per seed)
    for s, i in zip(torch.split(points, lengths.tolist()), seed_index.tolist()):
        assert int((s == all_seeds[i]).all(dim=1).sum()) == 1   # the seed, exactly once


# ----------------------------------------------------------------------------- 7. inference only
PEAK_SHAPE = (7, 3, 3)


def straight_peaks() -> torch.Tensor:
    """A float64 peak field ``(7, 3, 3, 1, 3)``: one peak along x everywhere."""
    peaks = torch.zeros(PEAK_SHAPE + (1, 3), dtype=torch.float64)
    peaks[..., 0, 0] = 1.0
    return peaks


def test_the_tracker_keeps_no_graph_even_with_gradients_enabled():
    """Inference only: gradients come from learn.propagate (tests/learn/test_propagate.py)."""
    peaks = straight_peaks().requires_grad_(True)
    mask = np.zeros(PEAK_SHAPE, bool)
    mask[2:5] = True
    tracker = Tracker(make_getter("peak", peaks=peaks, max_angle=40), BinaryCriterion(mask), [1.0, 1.1, 0.9],
                      TrackingParams(step_mm=0.4, min_len_mm=0, max_len_mm=6), dtype=torch.float64)
    with torch.enable_grad():
        (out,) = tracker.track(torch.tensor([[2.8, 0.8, 1.1], [3.2, 1.3, 0.7]], dtype=torch.float64))
    assert len(out) == 2 and out.lengths.min() >= 5
    assert out.points.grad_fn is None and not out.points.requires_grad


# ----------------------------------------------------------------------------- 8. integrators
def test_runge_kutta_follows_a_circular_field_better_than_euler():
    """Peaks tangent to circles around the z axis through (7, 7); a wall behind the seed stops the
    backward half at once, so every integrator runs the same arc (16 steps of 0.5 mm)."""
    c = 7.0
    g = np.stack(np.meshgrid(np.arange(16.0), np.arange(16.0), np.arange(3.0), indexing="ij"), -1)
    t = np.stack([-(g[..., 1] - c), g[..., 0] - c, np.zeros(g.shape[:3])], -1)
    peaks = torch.as_tensor(t / np.maximum(np.linalg.norm(t, axis=-1, keepdims=True), 1e-12))[..., None, :]
    mask = np.ones(g.shape[:3], bool)
    mask[10:13, 6, :] = False
    seed = torch.tensor([[c + 4.0, c - 0.4, 1.0]], dtype=torch.float64)
    r0 = torch.linalg.vector_norm(seed[0, :2] - c).item()
    drift = {}
    for integrator in ("euler", "rk2", "rk4"):
        tracker = Tracker(make_getter("peak", peaks=peaks, max_angle=60), BinaryCriterion(mask), [1, 1, 1],
                          TrackingParams(step_mm=0.5, min_len_mm=0, max_len_mm=9, integrator=integrator),
                          dtype=torch.float64)
        (out,) = tracker.track(seed)
        s = out.points
        assert len(s) == 17 and torch.equal(s[0], seed[0])      # backward stopped, forward ran 16 steps
        np.testing.assert_allclose(torch.linalg.vector_norm(torch.diff(s, dim=0), dim=1).numpy(), 0.5, rtol=1e-9)
        assert s[-1, 1] > c + 3                                 # went round, counter-clockwise
        drift[integrator] = abs(torch.linalg.vector_norm(s[-1, :2] - c).item() - r0)
    assert drift["euler"] > 0.2
    assert drift["rk2"] < drift["euler"] / 50 and drift["rk4"] < drift["euler"] / 50


# ----------------------------------------------------------------------------- 9. configuration
@pytest.mark.parametrize("kwargs,match", [
    (dict(step_mm=0), "step"),
    (dict(step_mm=-0.5), "step"),
    (dict(step_mm=float("nan")), "step"),
    (dict(min_len_mm=30, max_len_mm=20), "length"),
    (dict(min_len_mm=-1), "length"),
    (dict(integrator="midpoint"), "integrator"),
    (dict(step_mm=1.0, min_len_mm=0, max_len_mm=1.5), "two steps"),
], ids=["zero-step", "negative-step", "nan-step", "min-over-max", "negative-min", "integrator", "under-two-steps"])
def test_bad_tracking_parameters_raise(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TrackingParams(**kwargs)


@pytest.mark.parametrize("max_angle", [0, -10, 90.5, 180])
@pytest.mark.parametrize("method", ["det", "prob", "closest", "peak"])
def test_max_angle_out_of_range_raises(method, max_angle):
    sh, _, mask = straight_field()
    with pytest.raises(ConfigError, match="max_angle"):
        make_getter(method, sh=SHField(sh, legacy=True), peaks=straight_peaks(), max_angle=max_angle)


def test_bad_tracker_configuration_raises():
    sh, _, mask = straight_field()
    getter = make_getter("det", sh=SHField(sh, legacy=True), max_angle=90)      # 90 itself is allowed
    with pytest.raises(ConfigError, match="chunk"):
        Tracker(getter, BinaryCriterion(mask), VOX, chunk_size=0)
    with pytest.raises(ConfigError, match="voxel"):
        Tracker(getter, BinaryCriterion(mask), [1.0, 0.0, 1.0])
    with pytest.raises(ConfigError, match="seeds"):
        next(Tracker(getter, BinaryCriterion(mask), VOX).track(torch.zeros(4, 2)))
    with pytest.raises(ConfigError, match="method"):
        make_getter("eudx", sh=SHField(sh, legacy=True))
