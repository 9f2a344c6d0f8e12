"""The tracker: every active streamline advances together, seeds in chunks of bounded memory.

For a chunk of seeds the getter gives the initial directions (none, one or several per
seed); every streamline then grows a forward half along its initial direction and a
backward half from the seed the other way, each half one batched loop:

1. the integrator asks the getter for the next direction and moves (Euler, RK2, RK4);
2. a failed direction (nothing in the cone, off the grid) ends the half with no new point;
3. the stopping criterion checks the new point; any status but TRACKPOINT ends the half
   and the point is dropped, as DIPY does (the seed itself is never checked);
4. a half runs at most ``max_points - 1`` steps and keeps at most ``max_points - 2``
   points (DIPY's buffer rule);

and only the streamlines still going stay in the batch. A streamline is the reversed
backward half, the seed once, then the forward half. It is kept when
``min_points <= n <= max_points`` with ``max_points = int(max_len_mm / step_mm)`` and
``min_points = int(min_len_mm / step_mm)`` (DIPY's rule: longer ones are discarded, not
truncated; DIPY's det and prob trackers also truncate the lengths to whole mm first), and, unless ``return_all``, when both halves ended at a stopping point
(ENDPOINT or OUTSIDEIMAGE) rather than failing to find a direction.

The backward half starts against the first forward step (the normalised voxel-space
difference of its first point and the seed) when the forward half moved, else against the
initial direction: DIPY's rule. Its state comes from the getter's ``init_backward(seeds,
dirs, forward_points (S, T, 3), forward_count (S,), generator, forward_state)`` (the last
the forward half's state from ``init``, after it ran): stateless getters start it afresh,
DDTracking's GRU from what the forward half saw.

The tracker is inference only: it runs under ``torch.no_grad`` whatever the caller's mode,
so no step's graph is kept. Its packed, shrinking-active-set loop exists to equal DIPY
streamline for streamline and to write files; gradients belong to the fixed-shape
:func:`difftract.learn.propagate` (the differentiable propagator, with soft-stop weights,
checkpointing and truncation), whose forward half takes this tracker's steps and gives
its points exactly (``tests/learn/test_propagate.py``). One loop per purpose, instead of a
differentiable mode here that nothing but its tests used.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..errors import ConfigError
from ..threads import single_threaded_ops, worker_pool, worker_threads
from .getter_protocol import Getter, State
from .integrators import INTEGRATORS, normalize, step
from .stopping import ENDPOINT, OUTSIDEIMAGE, TRACKPOINT, Criterion


@dataclass
class TrackingParams:
    """How streamlines grow. Lengths and steps in mm; angles in degrees (the getter's cone)."""

    step_mm: float = 1.0
    min_len_mm: float = 20.0
    max_len_mm: float = 250.0
    integrator: str = "euler"
    return_all: bool = True

    def __post_init__(self):
        if not (np.isfinite(self.step_mm) and self.step_mm > 0):
            raise ConfigError(f"step size must be a positive number of mm, got {self.step_mm}")
        if not (0 <= self.min_len_mm <= self.max_len_mm and np.isfinite(self.max_len_mm)):
            raise ConfigError(f"need 0 <= min length <= max length (finite), got {self.min_len_mm} "
                              f"and {self.max_len_mm} mm")
        if self.integrator not in INTEGRATORS:
            raise ConfigError(f"unknown integrator {self.integrator!r}; expected one of {', '.join(INTEGRATORS)}")
        if self.max_points < 2:
            raise ConfigError(f"max length {self.max_len_mm} mm is under two steps of {self.step_mm} mm")

    @property
    def max_points(self) -> int:
        return int(self.max_len_mm / self.step_mm)

    @property
    def min_points(self) -> int:
        return int(self.min_len_mm / self.step_mm)

    def to_dict(self) -> dict:
        return {**asdict(self), "max_points": self.max_points, "min_points": self.min_points}


@dataclass
class Streamlines:
    """A chunk of streamlines, packed: ``points (P, 3)`` voxel coordinates, ``lengths (S,)``.

    ``seed_index`` is each streamline's seed (global index into the seeds given).
    """

    points: torch.Tensor
    lengths: torch.Tensor
    seed_index: torch.Tensor

    def __len__(self) -> int:
        return len(self.lengths)

    def split(self) -> list[torch.Tensor]:
        """One ``(n_i, 3)`` tensor per streamline."""
        return list(torch.split(self.points, self.lengths.tolist()))


def _take(state: State, index: torch.Tensor) -> State:
    """Rows ``index`` of a getter state (None, a tensor, or a dict of tensors and others)."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state[index]
    if isinstance(state, dict):
        return {k: (_take(v, index) if isinstance(v, (torch.Tensor, dict)) else v) for k, v in state.items()}
    raise TypeError(f"cannot select rows of a getter state of type {type(state).__name__}")


@dataclass
class _Half:
    ids: torch.Tensor        # (P,) streamline of each recorded point, in step order
    steps: torch.Tensor      # (P,) 1-based position within its half
    points: torch.Tensor     # (P, 3)
    count: torch.Tensor      # (S,) points kept
    status: torch.Tensor     # (S,) last stopping status
    dropped: torch.Tensor    # (S,) went past max_points: discarded


class Tracker:
    """Track streamlines from seeds with one getter and one stopping criterion.

    Parameters
    ----------
    getter : Getter
        A direction getter (see :mod:`.getters`).
    criterion : Criterion
        A stopping criterion (see :mod:`.stopping`).
    voxel_sizes : sequence of 3 float
        mm per voxel along each axis; steps in mm become ``dir / voxel_size * step_mm``.
    params : TrackingParams
    device, dtype
        Where and in which precision to track (float32 by default, float64 for equivalence).
    chunk_size : int or None
        Seeds tracked at once (bounds memory); the unit of reproducibility and of
        parallelism. None: :func:`preferred_chunk_size` of each run's seed count.
    workers : int or None
        Threads tracking chunks side by side on a CPU (None: torch's thread count, at most
        the usable cores; always 1 on a GPU). The result does not depend on it.
    """

    def __init__(self, getter: Getter, criterion: Criterion, voxel_sizes, params: TrackingParams | None = None, *,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, chunk_size: int | None = None,
                 workers: int | None = None):
        if chunk_size is not None and chunk_size < 1:
            raise ConfigError(f"chunk size must be at least 1, got {chunk_size}")
        if workers is not None and workers < 1:
            raise ConfigError(f"workers must be at least 1, got {workers}")
        sizes = np.asarray(voxel_sizes, dtype=np.float64)
        if sizes.shape != (3,) or not np.all(sizes > 0):
            raise ConfigError(f"voxel sizes must be three positive numbers, got {voxel_sizes}")
        self.params = params or TrackingParams()
        self.device, self.dtype = torch.device(device), dtype
        self.getter = getter.to(self.device, dtype)
        self.criterion = criterion.to(self.device, dtype)
        self.inv_voxel = torch.as_tensor(1.0 / sizes, device=self.device, dtype=dtype)
        self.chunk_size = None if chunk_size is None else int(chunk_size)
        self.workers = worker_threads(workers, self.device)

    # ------------------------------------------------------------------ public
    def track(self, seeds, seed: int = 0, progress=None, chunks: Sequence[int] | None = None) -> Iterator[Streamlines]:
        """Yield the streamlines of each chunk of ``seeds`` (``(N, 3)`` voxel coordinates), in seed order.

        ``seed`` derives each chunk's torch Generator (used by random getters), so a
        chunk's result depends only on ``seed``, its index, its seeds and the device,
        not on which worker thread tracked it. ``chunks`` (indices, of :meth:`n_chunks`)
        tracks only those chunks, as the whole run would: a shard of the chunks gives that
        part of the run's streamlines exactly.
        """
        seeds = torch.as_tensor(seeds)
        if seeds.dim() != 2 or seeds.shape[1] != 3:
            raise ConfigError(f"seeds must be an (N, 3) array of voxel coordinates, got shape {tuple(seeds.shape)}")
        size = self.chunk_size_for(len(seeds))
        starts = range(0, len(seeds), size)
        if chunks is not None and any(not 0 <= k < len(starts) for k in chunks):
            raise ConfigError(f"chunk indices must lie in 0..{len(starts) - 1} ({len(seeds)} seeds in chunks of "
                              f"{size}), got {list(chunks)}")
        order = list(range(len(starts)) if chunks is None else chunks)

        def one(k: int, getter: Getter) -> Streamlines:
            start = starts[k]
            chunk = seeds[start:start + size].to(self.device, self.dtype)
            generator = torch.Generator(self.device).manual_seed(_chunk_seed(seed, k))
            with torch.no_grad():          # grad mode is per thread: set it in the worker
                out = self._track_chunk(chunk, generator, getter)
            out.seed_index = out.seed_index + start
            return out

        if self.workers > 1 and len(order) > 1:      # workers is 1 on a GPU
            results = self._in_workers(order, one)
        else:
            results = self._in_this_thread(order, one)
        try:
            for k, out in zip(order, results):
                if progress is not None:
                    progress.update(min(size, len(seeds) - starts[k]))
                yield out
        finally:        # stopped early or failed: end the workers now, not when the frame is collected
            results.close()

    def _in_this_thread(self, order: list[int], one) -> Iterator[Streamlines]:
        """``one(k, getter)`` for each chunk in this thread, torch ops single-threaded on a CPU.

        On a CPU a step's ops are too small for torch's intra-op threads to pay: one thread
        tracks faster than two even on a quiet machine (``docs/performance.md``), and far
        faster on a busy one. Parallelism comes from chunks on workers instead.
        """
        for k in order:
            # per chunk, not across the yield: the consumer's own work keeps its threads
            with single_threaded_ops() if self.device.type == "cpu" else nullcontext():
                out = one(k, self.getter)
            yield out

    def _in_workers(self, order: list[int], one) -> Iterator[Streamlines]:
        """``one(k, getter)`` for each chunk on :attr:`workers` threads, yielded in ``order``.

        Each thread has its own copy of the getter (its scratch buffers are its own) and
        torch ops run single-threaded meanwhile (see :mod:`difftract.threads`). At most
        ``2 * workers`` chunks are tracked ahead of the consumer, which bounds memory.
        """
        getters: dict[int, Getter] = {}     # one per worker thread

        def task(k: int) -> Streamlines:
            thread = threading.get_ident()
            if thread not in getters:
                getters[thread] = self.getter.to(self.device, self.dtype)
            return one(k, getters[thread])

        with worker_pool(self.workers, "difftract-track") as pool:
            pending: deque[Future] = deque()
            try:
                for k in order:
                    pending.append(pool.submit(task, k))
                    if len(pending) >= 2 * self.workers:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()
            finally:                        # the consumer stopped early, or a chunk failed
                for f in pending:
                    f.cancel()

    def chunk_size_for(self, n_seeds: int) -> int:
        """Seeds per chunk in a run of ``n_seeds``: the size given, else :func:`default_chunk_size`
        (the preferred size, or fewer seeds when free memory holds fewer)."""
        return self.chunk_size or default_chunk_size(self.getter, self.params, self.device, self.dtype, n_seeds,
                                                     self.workers)

    def n_chunks(self, n_seeds: int) -> int:
        """How many chunks :meth:`track` cuts ``n_seeds`` seeds into."""
        return -(-int(n_seeds) // self.chunk_size_for(n_seeds))

    # ------------------------------------------------------------------ one chunk
    def _track_chunk(self, seeds: torch.Tensor, generator: torch.Generator, g: Getter) -> Streamlines:
        p = self.params
        dirs0, seed_index = g.seed_directions(seeds)
        x0 = seeds[seed_index]
        S = len(x0)
        forward_state = g.init(x0, dirs0, generator)
        fwd = self._half(g, x0, dirs0, forward_state, budget=None)
        moved = fwd.count > 0
        first = torch.zeros_like(x0)
        is_first = fwd.steps == 1
        first[fwd.ids[is_first]] = fwd.points[is_first]
        back_dirs = torch.where(moved[:, None], normalize(first - x0), dirs0)
        state = g.init_backward(x0, -back_dirs, _paths(fwd, S), fwd.count, generator, forward_state)
        del forward_state                  # whatever the getter kept of the forward half is no longer needed
        bwd = self._half(g, x0, -back_dirs, state, budget=p.max_points - 1 - fwd.count)

        n = bwd.count + 1 + fwd.count
        keep = ~bwd.dropped & (n >= p.min_points) & (n <= p.max_points)
        if not p.return_all:
            stopped = (fwd.status == ENDPOINT) | (fwd.status == OUTSIDEIMAGE)
            keep &= stopped & ((bwd.status == ENDPOINT) | (bwd.status == OUTSIDEIMAGE))
        return self._assemble(x0, fwd, bwd, n, keep, seed_index, S)

    def _half(self, getter: Getter, x0, dirs0, state, budget) -> _Half:
        """Grow one half of every streamline; see the module docstring for the rules."""
        S, M = len(x0), self.params.max_points
        device = x0.device
        active = torch.arange(S, device=device)
        pts, d = x0, dirs0
        count = torch.zeros(S, dtype=torch.long, device=device)
        status = torch.full((S,), TRACKPOINT, dtype=torch.long, device=device)
        dropped = torch.zeros(S, dtype=torch.bool, device=device)
        rec_ids, rec_steps, rec_pts = [], [], []
        cos_max = getter.cos_max_angle
        for i in range(1, M):
            if len(active) == 0:
                break
            states = []

            def field(points, prev, _state=state, _states=states):
                dirs, valid, new_state = getter.directions(points, prev, _state)
                _states.append(new_state)
                return dirs, valid

            new, d_new, ok = step(field, pts, d, self.params.step_mm, self.params.integrator, cos_max, self.inv_voxel)
            code = self.criterion.status(new)
            # whole-row updates and one nonzero per step: boolean indexing would search the mask each time
            status[active] = torch.where(ok, code, status[active])
            go = ok & (code == TRACKPOINT)
            if i == M - 1:          # DIPY's last buffer slot: computed, never kept
                break
            if budget is not None:  # this point would make the streamline too long: discard it now
                over = go & (i > budget[active])
                dropped[active] |= over
                go &= ~over
            keep = go.nonzero().squeeze(1)
            active, pts, d = active[keep], new[keep], d_new[keep]
            rec_ids.append(active)
            rec_steps.append(torch.full_like(active, i))
            rec_pts.append(pts)
            count[active] = i
            state = _take(states[0], keep)
        cat = (lambda xs, empty: torch.cat(xs) if xs else empty)
        empty_long = torch.zeros(0, dtype=torch.long, device=device)
        return _Half(cat(rec_ids, empty_long), cat(rec_steps, empty_long),
                     cat(rec_pts, x0.new_zeros(0, 3)), count, status, dropped)

    def _assemble(self, x0, fwd: _Half, bwd: _Half, n, keep, seed_index, S) -> Streamlines:
        """Pack the kept streamlines: reversed backward half, seed, forward half."""
        device = x0.device
        new_id = torch.full((S,), -1, dtype=torch.long, device=device)
        new_id[keep] = torch.arange(int(keep.sum()), device=device)
        lengths = n[keep]
        offsets = torch.cumsum(lengths, 0) - lengths
        kept_bwd = bwd.count[keep]
        total = int(lengths.sum())

        def place(half: _Half, sign: int):
            sel = keep[half.ids]
            ids = new_id[half.ids[sel]]
            return offsets[ids] + kept_bwd[ids] + sign * half.steps[sel], sel

        pos_f, sel_f = place(fwd, 1)
        pos_b, sel_b = place(bwd, -1)
        pos_s = offsets + kept_bwd
        index = torch.cat([pos_b, pos_s, pos_f])
        points = torch.cat([bwd.points[sel_b], x0[keep], fwd.points[sel_f]])
        out = x0.new_zeros(total, 3).index_put((index,), points)
        return Streamlines(out, lengths, seed_index[keep])


CHUNK_CPU, CHUNK_CUDA = 15_000, 200_000    # seeds at once when memory allows: past these, no faster
MIN_CHUNK_CPU = 2_000     # below this a step's ~100 small ops cost more than their arithmetic


def preferred_chunk_size(n_seeds: int | None, device: torch.device | str) -> int:
    """Seeds per chunk when memory allows: the GPU's large batch, or on a CPU the run cut into
    an even number of equal chunks of at most 15,000 seeds (at least 2,000).

    An even number keeps two workers busy to the end; measured on the brain phantom's
    27,202 seeds with two workers, two chunks of 13,601 track 7,035 seeds/s, four of 6,801
    5,968 and fourteen of 2,000 4,158 (each step's fixed cost is paid per chunk). It
    depends on the number of seeds and the device type only (not on the cores), so a
    run's chunks, and with them its random draws, are the same on every machine.
    """
    if torch.device(device).type == "cuda":
        return CHUNK_CUDA
    if n_seeds is None:
        return CHUNK_CPU
    n = int(n_seeds)
    chunks = 2 * -(-n // (2 * CHUNK_CPU))
    return max(MIN_CHUNK_CPU, -(-n // max(chunks, 1)))


def default_chunk_size(getter: Getter, params: TrackingParams, device: torch.device | str,
                       dtype: torch.dtype = torch.float32, n_seeds: int | None = None, workers: int = 1) -> int:
    """Seeds per chunk: :func:`preferred_chunk_size`, or fewer when a quarter of the free memory holds fewer.

    A seed costs the getter's query (``getter.bytes_per_seed``: a DDTracking network step
    is far more than a pmf lookup) plus the tracker's own record of both halves (up to
    ``max_points`` points each, with their streamline and step indices, copied once more
    when the chunk is assembled) and what the getter keeps per forward point
    (``getter.bytes_per_point``), once per worker thread tracking a chunk at the same
    time. The preferred size is kept whenever memory allows, since the random draws of
    ``prob`` and stochastic getters are made per chunk.
    """
    from ..memory import chunk_for

    device = torch.device(device)
    size = torch.empty(0, dtype=dtype).element_size()
    tracker = 2 * params.max_points * (3 * size + 16) * 2 + params.max_points * getter.bytes_per_point(size)
    per_seed = (getter.bytes_per_seed(size) + tracker) * max(1, int(workers))
    return chunk_for(per_seed, device, preferred_chunk_size(n_seeds, device), minimum=64)


def _paths(half: _Half, S: int) -> torch.Tensor:
    """The points of a half as ``(S, T, 3)``, step 1 first, zero past each streamline's count."""
    T = int(half.count.max()) if S else 0
    out = half.points.new_zeros(S, T, 3)
    out[half.ids, half.steps - 1] = half.points
    return out


def _chunk_seed(seed: int, chunk: int) -> int:
    """An independent 63-bit generator seed for chunk ``chunk`` of a run seeded with ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(chunk)]).generate_state(1, np.uint64)[0] >> np.uint64(1))
