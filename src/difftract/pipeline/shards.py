"""One seed set tracked by many processes: each torchrun rank tracks a shard of the chunks, rank 0 merges.

``torchrun --nproc-per-node N difftract track ...`` (or ``difftract run``) starts N copies of
the same command; :func:`join` finds this process's place from torchrun's environment
(``WORLD_SIZE > 1``, ``RANK``, ``LOCAL_RANK``), initialises the process group when nobody has
(gloo on CPU, nccl on GPU) and gives each rank its own device (``cuda:LOCAL_RANK``, or the
CPU). :func:`track_shards` then runs the tracking stage's collective part.

Why the merged file equals a single process's, streamline for streamline and bit for bit:

- every rank draws the same seeds (a CPU generator seeded by ``--seed``);
- every rank cuts them into the same chunks: the chunk size is ``--chunk-size``, or the
  device's default lowered to what the smallest rank's free memory holds
  (:meth:`Group.smallest`), never a function of the number of ranks;
- a rank tracks whole chunks under their global indices
  (:meth:`~difftract.tracking.tracker.Tracker.track` ``chunks=``), so ``prob``'s generator
  for chunk ``k`` is seeded by ``(seed, k)`` on whichever rank runs it;
- the shards are contiguous ranges of chunks in rank order (:func:`chunk_ranges`), so rank
  order is seed order;
- a shard holds the tracker's own voxel coordinates, in its own dtype, and rank 0 replays
  them through the same :meth:`~difftract.io.stream.StreamWriter.write` a single process
  calls, so the conversion to RAS mm and the file are the same too (for .trx, .trk and .tck).

Files: rank 0 makes a staging folder beside the output and tells every rank its path;
rank ``r`` writes ``rank{r}.points`` and ``rank{r}.lengths`` in it (ranks on other machines
need the output folder on a shared file system, and are told so when rank 0 cannot see
their shard). Rank 0 writes the output and its sidecar atomically and removes the folder.
A failure on any rank is everyone's: the ranks exchange their outcome after tracking and
after merging, all raise, and no partial output is left.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, DifftractError

log = logging.getLogger("difftract")
TIMEOUT_S = 4 * 3600          # collective waits (DIFFTRACT_DIST_TIMEOUT overrides): rank 0's merge of a big run
REPLAY_STREAMLINES = 20_000     # streamlines handed to the writer at once when merging (bounds memory)


@dataclass(frozen=True)
class Group:
    """This process's place among torchrun's ranks, and the device it tracks on."""

    rank: int
    world: int
    device: torch.device

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def gather(self, obj: Any) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        import torch.distributed as dist

        objs = [None] * self.world
        dist.all_gather_object(objs, obj)
        return objs

    def broadcast(self, obj: Any = None) -> Any:
        """Rank 0's ``obj`` on every rank."""
        import torch.distributed as dist

        box = [obj if self.leader else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def smallest(self, value: int) -> int:
        """The smallest ``value`` of all ranks (a chunk size every rank's memory holds)."""
        return min(self.gather(int(value)))


def join(device: torch.device) -> Group | None:
    """This process's :class:`Group` under torchrun with ``WORLD_SIZE > 1``; None for a single process.

    The process group is initialised here unless the caller already did (then its backend
    is kept); with CUDA, rank ``r`` of a node tracks on ``cuda:LOCAL_RANK``.
    """
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    device = torch.device(device)
    if device.type == "cuda" and device.index is not None:
        raise ConfigError(f"under torchrun give --device cuda (or auto), not {device}: rank r of a node uses "
                          "cuda:LOCAL_RANK; choose the GPUs with CUDA_VISIBLE_DEVICES")
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ConfigError(f"local rank {local} has no GPU: this machine has {torch.cuda.device_count()}; "
                              f"start at most that many processes per node (torchrun --nproc-per-node)")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # rank 0 merges while the others wait: far longer than NCCL's 10-minute default on a big run
        timeout = timedelta(seconds=float(os.environ.get("DIFFTRACT_DIST_TIMEOUT", TIMEOUT_S)))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
        atexit.register(_destroy)
    group = Group(dist.get_rank(), dist.get_world_size(), device)
    if not group.leader:
        _prefix_logs(group.rank)
    return group


def _destroy() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


class _RankPrefix(logging.Filter):
    """Marks a rank's log lines, so that the ones every rank repeats can be told from rank 0's."""

    def __init__(self, rank: int):
        super().__init__()
        self.prefix = f"[rank {rank}] "

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefix):
            record.msg = self.prefix + str(record.msg)
        return True


def _prefix_logs(rank: int) -> None:
    if not any(isinstance(f, _RankPrefix) for f in log.filters):
        log.addFilter(_RankPrefix(rank))


def chunk_ranges(n_chunks: int, world: int) -> list[range]:
    """Contiguous ranges of chunk indices, one per rank in rank order, sizes differing by at most one."""
    return [range(r * n_chunks // world, (r + 1) * n_chunks // world) for r in range(world)]


def shard_seeds(group: Group, n_chunks: int, chunk_size: int, n_seeds: int) -> int:
    """How many of the ``n_seeds`` seeds this rank tracks."""
    return _seeds_in(chunk_ranges(n_chunks, group.world)[group.rank], chunk_size, n_seeds)


def _seeds_in(chunks: range, chunk_size: int, n_seeds: int) -> int:
    return min(chunks.stop * chunk_size, n_seeds) - min(chunks.start * chunk_size, n_seeds)


@dataclass
class Shard:
    """What one rank tracked (or why it failed)."""

    rank: int
    device: str
    chunks: tuple[int, int]          # [first, stop) chunk indices
    n_seeds: int = 0
    n_streamlines: int = 0
    n_points: int = 0
    dtype: str = "<f4"               # of the tracker's points, replayed as they are
    seconds: float = 0.0
    error: str | None = None

    def record(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("dtype", "error")}


@dataclass
class Merged:
    """The sharded stage's outcome on this rank.

    ``lengths`` are point counts: every streamline's on rank 0, this rank's shard's elsewhere.
    """

    path: Path
    n_streamlines: int
    n_points: int
    seconds: float
    shards: list[Shard]
    lengths: np.ndarray


def track_shards(group: Group, parts: Callable[[range], Iterable], n_chunks: int, chunk_size: int, n_seeds: int,
                 out: Path, affine: np.ndarray, shape, *, force: bool, record: dict) -> Merged:
    """Track this rank's chunks, then merge every rank's into ``out`` (rank 0) with its sidecar.

    ``parts(chunks)`` yields the tracker's :class:`~difftract.tracking.tracker.Streamlines` for
    those chunk indices; ``record`` is the sidecar's provenance, completed here with the
    counts, the seconds and one entry per rank. Collective: every rank calls it.
    """
    start = time.perf_counter()
    mine = chunk_ranges(n_chunks, group.world)[group.rank]
    if group.leader and n_chunks < group.world:
        log.warning("%d chunk(s) of %d seeds for %d ranks: %d rank(s) have nothing to track; a smaller --chunk-size "
                    "spreads the work (the tractogram then equals a single process's with that --chunk-size)",
                    n_chunks, chunk_size, group.world, group.world - n_chunks)
    folder = _agree_folder(group, Path(out))
    try:
        return _track_and_merge(group, folder, parts, mine, chunk_size, n_seeds, out, affine, shape, force, record,
                                start)
    finally:    # whatever happened, rank 0 leaves no shard behind (the other ranks are done with them)
        if group.leader:
            shutil.rmtree(folder, ignore_errors=True)


def _track_and_merge(group: Group, folder: Path, parts: Callable[[range], Iterable], mine: range, chunk_size: int,
                     n_seeds: int, out: Path, affine, shape, force: bool, record: dict, start: float) -> Merged:
    out = Path(group.broadcast(str(out)))     # rank 0's output (the ranks' own ``out`` may be staged elsewhere)
    shard = Shard(group.rank, str(group.device), (mine.start, mine.stop),
                  n_seeds=_seeds_in(mine, chunk_size, n_seeds))
    failure = None
    try:
        lengths = _write_shard(folder, shard, parts(mine))
    except Exception as exc:    # every rank must hear of it, or the others wait for this one forever
        failure, lengths = exc, np.zeros(0, np.int64)
        shard.error = f"{type(exc).__name__}: {exc}"
    shard.seconds = round(time.perf_counter() - start, 3)
    shards = group.gather(shard)
    _raise_if_failed(shards, failure)

    merged = None
    if group.leader:
        try:
            merged = _merge(folder, shards, out, affine, shape, force, record, n_seeds, start)
        except Exception as exc:
            failure = exc
    outcome = group.broadcast(None if failure is None else f"{type(failure).__name__}: {failure}")
    if failure is not None:
        raise failure
    if outcome is not None:
        raise DifftractError(f"rank 0 could not merge the shards into {out}: {outcome}")
    if merged is None:
        merged = Merged(out, sum(s.n_streamlines for s in shards), sum(s.n_points for s in shards),
                        time.perf_counter() - start, shards, lengths)
    return merged


def _agree_folder(group: Group, out: Path) -> Path:
    """Rank 0's staging folder for the shards, known to every rank (all raise if rank 0 could not make it)."""
    from ..io.atomic import staging_dir

    folder, problem = None, None
    if group.leader:
        try:
            folder = staging_dir(out, "spool")
        except OSError as exc:
            problem = f"cannot make a staging folder beside {out}: {exc}"
    folder, problem = group.broadcast((None if folder is None else str(folder), problem))
    if problem is not None:
        raise DifftractError(problem if group.leader else f"rank 0 failed: {problem}")
    return Path(folder)


def _write_shard(folder: Path, shard: Shard, parts: Iterable) -> np.ndarray:
    """Spool this rank's streamlines, as the tracker gave them, to ``rank{r}.points`` / ``rank{r}.lengths``."""
    all_lengths = []
    with open(folder / f"rank{shard.rank}.points", "wb") as points, \
            open(folder / f"rank{shard.rank}.lengths", "wb") as lengths:
        for part in parts:
            array = part.points.detach().cpu().numpy()
            shard.dtype = array.dtype.str
            array.tofile(points)
            counts = part.lengths.cpu().numpy().astype("<i8")
            counts.tofile(lengths)
            all_lengths.append(counts)
            shard.n_streamlines += len(counts)
            shard.n_points += int(counts.sum())
    return np.concatenate(all_lengths) if all_lengths else np.zeros(0, np.int64)


def _raise_if_failed(shards: list[Shard], failure: Exception | None) -> None:
    """Raise this rank's own failure, else the first other rank's, if any rank failed."""
    failed = [s for s in shards if s.error is not None]
    if not failed:
        return
    if failure is not None:
        raise failure
    first = failed[0]
    raise DifftractError(f"rank {first.rank} failed while tracking chunks {first.chunks[0]}..{first.chunks[1] - 1}: "
                         f"{first.error}")


def _merge(folder: Path, shards: list[Shard], out: Path, affine, shape, force: bool, record: dict, n_seeds: int,
           start: float) -> Merged:
    """Rank 0: replay every shard, in rank order, into ``out`` through the writer a single process uses."""
    from ..io.stream import open_writer

    lengths = []
    with open_writer(out, affine, shape, force=force) as writer:
        for shard in shards:
            counts, points = _read_shard(folder, shard)
            offsets = np.concatenate([[0], np.cumsum(counts)])
            for i in range(0, len(counts), REPLAY_STREAMLINES):
                j = min(i + REPLAY_STREAMLINES, len(counts))
                writer.write(points[offsets[i]:offsets[j]], counts[i:j])
            lengths.append(counts)
        seconds = time.perf_counter() - start
        writer.sidecar = {**record, "n_seeds": int(n_seeds), "n_streamlines": int(writer.n_streamlines),
                          "n_points": int(writer.n_points), "seconds": round(seconds, 3), "ranks": len(shards),
                          "shards": [s.record() for s in shards]}
    return Merged(out, writer.n_streamlines, writer.n_points, seconds, shards, np.concatenate(lengths))


def _read_shard(folder: Path, shard: Shard) -> tuple[np.ndarray, np.ndarray]:
    """A rank's lengths and points (memory-mapped), checked against what the rank said it wrote."""
    points_path, lengths_path = folder / f"rank{shard.rank}.points", folder / f"rank{shard.rank}.lengths"
    try:
        counts = np.fromfile(lengths_path, dtype="<i8")
        size = points_path.stat().st_size
    except FileNotFoundError:
        raise DifftractError(f"rank {shard.rank}'s shard is missing from {folder}: ranks on other machines need the "
                             "output folder on a file system every machine shares") from None
    expected = shard.n_points * 3 * np.dtype(shard.dtype).itemsize
    if len(counts) != shard.n_streamlines or int(counts.sum()) != shard.n_points or size != expected:
        raise DifftractError(f"rank {shard.rank}'s shard in {folder} is incomplete ({len(counts)} of "
                             f"{shard.n_streamlines} streamlines, {size} of {expected} bytes of points)")
    if shard.n_points == 0:
        return counts, np.zeros((0, 3), np.dtype(shard.dtype))
    return counts, np.memmap(points_path, dtype=shard.dtype, mode="r", shape=(shard.n_points, 3))
