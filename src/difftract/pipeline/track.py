"""Tracking as a pipeline stage: a direction source, a stopping rule and seeds -> a tractogram file.

``difftract track`` and :func:`.run.run_subject` both call :func:`track`. The direction
source (:mod:`.sources`) is a classical fODF (:class:`~.sources.FodSource`: det, prob, closest,
peak) or the DDTracking network on the SH its weights read, the signal's or the CSD fODF's
(:class:`~.sources.LearnedSource`); the defaults that belong to a rule live with it
(:data:`~difftract.tracking.seeding.SEEDS_PER_VOXEL`, the tracker's 1 mm step, and a model's
own from its weights: :class:`~difftract.models.ddtracking.defaults.TrackingDefaults`).
Streamlines are streamed to the file chunk by chunk, so memory is bounded by the chunk
size (sized from the getter's per-seed cost and the free memory), not by the tractogram.
Under ``torchrun`` (``WORLD_SIZE > 1``) every rank tracks whole chunks of the same seeds and
rank 0 merges them into ``out``, equal to a single process's file (:mod:`.shards`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..errors import ConfigError
from ..io.atomic import check_outputs
from ..io.sidecar import provenance, sidecar_path
from .compute import Compute, memory_guard
from .sources import FodSource, LearnedSource
from .track_options import TrackOptions
from ..console import Console

log = logging.getLogger("difftract")


class Grid(Protocol):
    """What tracking reads of a scan: its grid and its files (a :class:`~difftract.io.dwi.DWI`, or a
    :class:`~difftract.io.grid.ScanGrid` when the field was made elsewhere and the signal is not needed)."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    files: dict[str, Path]

    @property
    def voxel_sizes(self) -> np.ndarray: ...


@dataclass
class Stopping:
    """The stopping criterion and how the sidecar names it."""

    criterion: object
    description: str

    @classmethod
    def from_mask(cls, mask: np.ndarray, name: str) -> Stopping:
        from ..tracking.stopping import BinaryCriterion

        return cls(BinaryCriterion(mask), f"mask {name}")

    @classmethod
    def from_fa(cls, dwi, threshold: float, compute: Compute, console: Console) -> Stopping:
        """Stop where the (trilinear) DTI FA falls to ``threshold``; the tensor is fitted here."""
        from ..reconst.dti import TensorModel
        from ..tracking.stopping import ThresholdCriterion

        fa = np.nan_to_num(TensorModel(dwi.gtab).fit(dwi.signal, dwi.mask, **compute.fit_options(console.bars)).fa)
        return cls(ThresholdCriterion(fa, threshold), f"FA > {threshold}")


@dataclass
class Seeding:
    """Where streamlines start: random points per voxel of ``mask``, a ``density`` grid, or given ``points``."""

    mask: np.ndarray | None = None
    density: int | None = None
    points: np.ndarray | None = None      # voxel coordinates (N, 3)
    description: str = ""

    def seeds(self, per_voxel: int, seed: int) -> torch.Tensor:
        from ..tracking.seeding import grid_seeds, random_seeds

        if self.points is not None:
            return torch.as_tensor(self.points, dtype=torch.float64)
        if self.mask is None:
            raise ConfigError("no seed mask: give --seed-mask (or --stop-mask/--mask), or --seeds-file")
        if self.density is not None:
            return grid_seeds(self.mask, self.density)
        return random_seeds(self.mask, per_voxel, torch.Generator().manual_seed(seed))

    def record(self, per_voxel: int) -> str:
        if self.points is not None:
            return f"file {self.description}" if self.description else f"{len(self.points)} given points"
        if self.density is not None:
            return f"grid density {self.density} in {self.description}"
        return f"{per_voxel} random per voxel in {self.description}"


@dataclass
class TrackResult:
    """What a tracking stage made."""

    path: Path
    n_seeds: int
    n_streamlines: int
    seconds: float
    lengths_mm: np.ndarray


def track(dwi: Grid, out: Path, source: FodSource | LearnedSource, stopping: Stopping, seeding: Seeding,
          options: TrackOptions = TrackOptions(), *, compute: Compute = Compute(), console: Console = Console(),
          force: bool = False, inputs: list[Path] = (), equivalent: str | None = None) -> TrackResult:
    """Track ``dwi``'s field from ``seeding`` until ``stopping`` and stream the streamlines to ``out``.

    ``out`` (.trx, .trk or .tck) and its JSON sidecar appear together, only on success.
    ``inputs`` are the files the sidecar lists besides the scan's.
    """
    from ..io.stream import open_writer
    from ..threads import worker_threads
    from ..tracking.tracker import Tracker, TrackingParams, default_chunk_size, preferred_chunk_size
    from .fits import scan_inputs
    from .shards import join, shard_seeds, track_shards

    out = Path(out)
    inputs = scan_inputs(dwi) + [Path(p) for p in inputs]
    check_outputs([out, sidecar_path(out)], force, inputs=inputs)
    if isinstance(source, LearnedSource) != (options.method == "ddtracking"):
        wanted = "the DDTracking network" if options.method == "ddtracking" else "an fODF (FodSource)"
        raise ConfigError(f"--method {options.method} tracks {wanted}, not a {type(source).__name__}")
    step_mm, per_voxel = source.defaults(dwi.voxel_sizes)
    step_mm = options.step_mm if options.step_mm is not None else step_mm
    per_voxel = options.seeds_per_voxel or per_voxel
    params = TrackingParams(step_mm=step_mm, min_len_mm=options.min_len_mm, max_len_mm=options.max_len_mm,
                            integrator=options.integrator, return_all=not options.valid_only)
    group = join(compute.torch_device)      # None unless torchrun started several ranks: see .shards
    device = compute.torch_device if group is None else group.device
    if group is not None and not group.leader:
        console = Console(quiet=True)
    dtype = torch.float64 if compute.dtype == "float64" else torch.float32
    if isinstance(source, LearnedSource) and (group is None or group.leader):
        source.warn_domain(dwi.files.get("dwi", "the scan"))
    seeds = seeding.seeds(per_voxel, options.seed)
    getter = source.getter(options, dwi.voxel_sizes, compute, console)
    workers = worker_threads(device=device)
    chunk = compute.chunk_size or default_chunk_size(getter, params, device, dtype, len(seeds), workers)
    if group is not None and compute.chunk_size is None:    # the same chunks on every rank
        chunk = group.smallest(chunk)
    if group is not None:
        _check_same_seeds(group, seeds)
    if compute.chunk_size is None and chunk < min(len(seeds), preferred_chunk_size(len(seeds), device)):
        log.warning("free memory allows %d seeds per chunk, fewer than the default; random draws are made per chunk, "
                    "so give --chunk-size %d to reproduce this tractogram elsewhere", chunk, chunk)
    tracker = Tracker(getter, stopping.criterion, dwi.voxel_sizes, params, device=device, dtype=dtype,
                      chunk_size=chunk, workers=workers)
    # the products' dtype as run: float32 means the tracking dtype's (float64 with --dtype float64)
    products = "bfloat16" if options.matmul_dtype == "bfloat16" else str(dtype).removeprefix("torch.")
    learned = {"sampler_steps": options.sampler_steps, "stochastic": options.stochastic, "matmul_dtype": products,
               "symmetries": options.symmetries,
               **source.guide_record(options)} if isinstance(source, LearnedSource) else {}
    record = provenance("track", {"method": options.method, **params.to_dict(), "max_angle": options.max_angle,
                                  "pmf_threshold": options.pmf_threshold, "stopping": stopping.description,
                                  "seeding": seeding.record(per_voxel), "device": str(device),
                                  "dtype": str(dtype), "chunk_size": chunk, "worker_threads": workers,
                                  **source.record(), **learned},
                        seed=options.seed, inputs=inputs, equivalent=equivalent,
                        sh_basis=source.sh_basis)
    start = time.perf_counter()
    lengths = []
    if group is None:
        with open_writer(out, dwi.affine, dwi.shape, force=force) as writer, \
                console.progress(len(seeds), f"track {options.method}", "seed") as bar:
            for part in _guarded(tracker.track(seeds, seed=options.seed, progress=bar), options.method, device,
                                 chunk):
                writer.write(part.points.detach().cpu().numpy(), part.lengths.cpu().numpy())
                lengths.append((part.lengths.cpu().numpy() - 1) * step_mm)
            seconds = time.perf_counter() - start
            writer.sidecar = {**record, "n_seeds": int(len(seeds)), "n_streamlines": int(writer.n_streamlines),
                              "n_points": int(writer.n_points), "seconds": round(seconds, 3)}
        n_streamlines, where = writer.n_streamlines, str(device)
    else:   # this rank's whole chunks, then rank 0 merges them all in seed order
        n_chunks = tracker.n_chunks(len(seeds))
        with console.progress(shard_seeds(group, n_chunks, chunk, len(seeds)), f"track {options.method}",
                              "seed") as bar:
            def parts(chunks):
                return _guarded(tracker.track(seeds, seed=options.seed, progress=bar, chunks=chunks),
                                options.method, device, chunk)

            merged = track_shards(group, parts, n_chunks, chunk, len(seeds), out, dwi.affine, dwi.shape,
                                  force=force, record=record)
        out, n_streamlines, seconds = merged.path, merged.n_streamlines, merged.seconds
        lengths, where = [(merged.lengths - 1) * step_mm], f"{group.world} ranks ({device.type})"
        if not group.leader:     # rank 0 speaks for the run
            return TrackResult(out, int(len(seeds)), int(n_streamlines), seconds, lengths[0])
    lengths = np.concatenate(lengths) if lengths else np.zeros(0)
    rate = len(seeds) / max(seconds, 1e-9)
    console.say(f"{options.method}: {n_streamlines:,} streamlines from {len(seeds):,} seeds in {seconds:.1f} s "
                f"({rate:,.0f} seeds/s on {where}, {str(dtype).replace('torch.', '')}) -> {out}")
    if n_streamlines == 0:
        log.warning("no streamline was kept: every seed stopped before --min-len-mm %g (or found no direction); "
                    "check the stopping mask and the seeds", options.min_len_mm)
    if len(lengths):
        console.say(f"  length median {np.median(lengths):.1f} mm (5-95%: {np.percentile(lengths, 5):.1f}-"
                    f"{np.percentile(lengths, 95):.1f})")
    return TrackResult(out, int(len(seeds)), int(n_streamlines), seconds, lengths)


def _guarded(chunks, method: str, device, chunk: int):
    """The tracker's chunks, with running out of memory turned into one line naming --chunk-size."""
    iterator = iter(chunks)
    while True:
        with memory_guard(f"{method} tracking", device, chunk, unit="seeds"):
            out = next(iterator, None)
        if out is None:
            return
        yield out


def _check_same_seeds(group, seeds: torch.Tensor) -> None:
    """Every rank must shard the same seeds (made from its own fits and masks): refuse, on all ranks, if not.

    A voxel whose FA sits on a threshold could otherwise seed on one rank and not on another,
    and the merged file would silently mix two seed lists.
    """
    import hashlib

    from ..errors import DifftractError

    digests = group.gather(hashlib.sha256(np.ascontiguousarray(seeds.cpu().numpy()).tobytes()).hexdigest())
    if len(set(digests)) > 1:
        raise DifftractError(f"the ranks made different seeds ({len(set(digests))} different lists of "
                             f"{len(seeds):,} here): their inputs or fits differ; track with one process, or "
                             "give every rank the same --seeds-file or masks")

