"""Tracking as a pipeline stage: a direction source, a stopping rule and seeds -> a tractogram file.

``difftract track`` and :func:`.run.run_subject` both call :func:`track`. The direction
source is a classical fODF (:class:`FodSource`: det, prob, closest, peak) or the DDTracking
network on the SH its weights read, the signal's or the CSD fODF's (:class:`LearnedSource`);
the defaults that belong to a rule live with it (:data:`~difftract.tracking.seeding.SEEDS_PER_VOXEL`, the tracker's 1 mm step,
and a model's own from its weights: :class:`~difftract.models.ddtracking.defaults.TrackingDefaults`).
Streamlines are streamed to the file chunk by chunk, so memory is bounded by the chunk
size (sized from the getter's per-seed cost and the free memory), not by the tractogram.
Under ``torchrun`` (``WORLD_SIZE > 1``) every rank tracks whole chunks of the same seeds and
rank 0 merges them into ``out``, equal to a single process's file (:mod:`.shards`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..errors import ConfigError
from ..io.atomic import check_outputs
from ..io.sidecar import provenance, sidecar_path
from ..tracking.seeding import SEEDS_PER_VOXEL
from .compute import Compute, memory_guard
from ..console import Console

log = logging.getLogger("difftract")
SH_BASES = ("descoteaux07", "descoteaux07_legacy")


class Grid(Protocol):
    """What tracking reads of a scan: its grid and its files (a :class:`~difftract.io.dwi.DWI`, or a
    :class:`~difftract.io.grid.ScanGrid` when the field was made elsewhere and the signal is not needed)."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    files: dict[str, Path]

    @property
    def voxel_sizes(self) -> np.ndarray: ...


@dataclass(frozen=True)
class TrackOptions:
    """How streamlines grow and are kept (``None``: the rule's own default)."""

    method: str = "det"
    step_mm: float | None = None          # 1 mm; DDTracking: its training step
    seeds_per_voxel: int | None = None    # SEEDS_PER_VOXEL; DDTracking: its weights'
    max_angle: float = 45.0
    min_len_mm: float = 20.0
    max_len_mm: float = 250.0
    integrator: str = "euler"
    pmf_threshold: float = 0.1
    valid_only: bool = False
    sampler_steps: int = 1
    stochastic: bool = False
    fodf_guide: float = 0.0               # DDTracking: the weight of the CSD fODF's peaks (models/ddtracking/guide.py)
    seed: int = 0

    def __post_init__(self):
        if self.seeds_per_voxel is not None and self.seeds_per_voxel < 1:
            raise ConfigError(f"--seeds-per-voxel must be at least 1, got {self.seeds_per_voxel}")
        if self.sampler_steps < 1:
            raise ConfigError(f"--sampler-steps must be at least 1, got {self.sampler_steps}")
        learned_only = [f"--{k}" for k, on in (("stochastic", self.stochastic),
                                               ("sampler-steps", self.sampler_steps != 1),
                                               ("fodf-guide", self.fodf_guide != 0)) if on]
        if learned_only and self.method != "ddtracking":
            raise ConfigError(f"{', '.join(learned_only)} only apply to --method ddtracking")
        self.guide_config()                     # a weight outside [0, 1] is refused before any fit
        if self.method == "ddtracking" and self.integrator != "euler":
            raise ConfigError("DDTracking advances its GRU one point per step: use --integrator euler")

    def guide_config(self):
        """DDTracking's fODF guide (:class:`~difftract.models.ddtracking.guide.GuideConfig`), None without one."""
        from ..models.ddtracking.guide import GuideConfig

        return GuideConfig(weight=self.fodf_guide) if self.fodf_guide else None


@dataclass
class FodSource:
    """A classical rule's field: fODF SH coefficients ``(X, Y, Z, m)`` and their basis."""

    coeffs: np.ndarray
    legacy: bool = False
    description: str = "CSD"
    mask: np.ndarray | None = None     # where ``peak`` looks for peaks (default: everywhere)

    @classmethod
    def fitted(cls, dwi, lmax: int = 8, compute: Compute = Compute(), console: Console = Console()) -> FodSource:
        """The CSD fODF of ``dwi`` (auto response, the highest shell), as ``track`` fits it without ``--sh``."""
        from ..reconst.csd import CsdModel

        log.info("no --sh: fitting CSD (lmax %d, auto response)", lmax)
        with memory_guard(f"the CSD fit (lmax {lmax})", compute.torch_device, None):
            fit = CsdModel(dwi.gtab, lmax=lmax, legacy=False).fit(dwi.signal, dwi.mask,
                                                                  **compute.fit_options(console.bars))
        return cls(fit.coeffs.astype(np.float32), description=f"CSD lmax {lmax}", mask=dwi.mask)

    def defaults(self, voxel_sizes) -> tuple[float, int]:
        return 1.0, SEEDS_PER_VOXEL

    def getter(self, options: TrackOptions, voxel_sizes, compute: Compute, console: Console):
        from ..reconst.peaks import peaks_from_sh
        from ..tracking.getters import make_getter
        from ..tracking.sh_field import SHField

        sh_field = SHField(self.coeffs, legacy=self.legacy, pmf_threshold=options.pmf_threshold)
        peaks = None
        if options.method == "peak":
            found = peaks_from_sh(self.coeffs, self.mask, legacy=self.legacy, **compute.fit_options(console.bars))
            peaks = torch.as_tensor(found.dirs)
        return make_getter(options.method, sh=sh_field, peaks=peaks, max_angle=options.max_angle)

    @property
    def sh_basis(self) -> str:
        return SH_BASES[int(self.legacy)]

    def record(self) -> dict:
        return {"fod": self.description}


@dataclass
class LearnedSource:
    """The DDTracking network, its weights' metadata, and the SH it reads (the scan's signal SH, or its
    CSD fODF SH for a network trained on those: :func:`~difftract.models.ddtracking.data.input_sh`).

    ``fod`` is the CSD fODF (a :class:`FodSource`) that guides its steps under
    ``TrackOptions.fodf_guide`` (:mod:`~difftract.models.ddtracking.guide`); None without a guide.

    ``domain`` compares the scan with what the network was trained on
    (:func:`~difftract.models.ddtracking.domain.scan_domain`): :func:`track` warns in one
    line when the scan lies outside, and the sidecar records it.
    """

    model: torch.nn.Module
    meta: dict
    sh: np.ndarray
    domain: dict = field(default_factory=dict)
    fod: FodSource | None = None

    @classmethod
    def for_scan(cls, model: torch.nn.Module, meta: dict, sh: np.ndarray, dwi, fod: FodSource | None = None
                 ) -> LearnedSource:
        """The network, the SH it reads, and how ``dwi`` compares with its training domain."""
        from ..models.ddtracking.domain import scan_domain

        return cls(model, meta, sh, scan_domain(meta, dwi), fod)

    @classmethod
    def fitted(cls, model: torch.nn.Module, meta: dict, dwi, device="cpu", fod: FodSource | None = None
               ) -> LearnedSource:
        """:meth:`for_scan` with the input fitted from ``dwi`` at the network's lmax: the signal SH of the
        shell nearest b=1000, or the CSD fODF SH for a network of ``input`` fodf
        (:func:`~difftract.models.ddtracking.data.input_sh`)."""
        from ..models.ddtracking.data import input_sh
        from ..reconst.sh import lmax_from_ncoeffs

        lmax = lmax_from_ncoeffs(model.config.n_coeffs)
        return cls.for_scan(model, meta, input_sh(dwi, model.config.input, lmax, device=device), dwi, fod)

    def warn_domain(self, scan) -> None:
        """One line when the scan lies outside the network's training data."""
        if self.domain.get("domain_warnings"):
            log.warning("DDTracking: %s is outside the network's training data (%s); its streamlines may be "
                        "unreliable, compare with --method det", scan, "; ".join(self.domain["domain_warnings"]))

    def defaults(self, voxel_sizes) -> tuple[float, int]:
        from ..models.ddtracking.defaults import TrackingDefaults

        own = TrackingDefaults.from_meta(self.meta)
        return own.step_mm(voxel_sizes), own.seeds_per_voxel

    def getter(self, options: TrackOptions, voxel_sizes, compute: Compute, console: Console):
        from ..models.ddtracking.getter import DDTrackingGetter

        trained = self.defaults(voxel_sizes)[0]
        if options.step_mm is not None and abs(options.step_mm - trained) > 1e-6 * trained:
            log.warning("--step-mm %g differs from the step DDTracking was trained with (%g mm here)",
                        options.step_mm, trained)
        if not np.allclose(voxel_sizes, min(voxel_sizes), rtol=1e-3):
            log.warning("anisotropic voxels %s: DDTracking was trained in voxel units, so its steps and directions "
                        "are converted, but resampling to isotropic voxels matches training better",
                        tuple(round(float(v), 3) for v in voxel_sizes))
        return DDTrackingGetter(self.model, self.sh, options.max_angle, options.sampler_steps, options.stochastic,
                                voxel_sizes=voxel_sizes, guide=self.guide(options))

    def guide(self, options: TrackOptions):
        """The fODF guide of ``options.fodf_guide`` on :attr:`fod` (None at 0)."""
        from ..models.ddtracking.guide import FodfGuide
        from ..tracking.sh_field import SHField

        config = options.guide_config()
        if config is None:
            return None
        if self.fod is None:
            raise ConfigError("--fodf-guide needs the CSD fODF: give LearnedSource a fod")
        return FodfGuide(SHField(self.fod.coeffs, legacy=self.fod.legacy, pmf_threshold=options.pmf_threshold),
                         config)

    def guide_record(self, options: TrackOptions) -> dict:
        """What the sidecar says of the guide: its settings and the fODF it read, or ``fodf_guide`` 0."""
        config = options.guide_config()
        if config is None:
            return {"fodf_guide": 0.0}
        return {**config.record(), "fodf_guide_fod": self.fod.description, "fodf_guide_sh_basis": self.fod.sh_basis}

    sh_basis = "descoteaux07"     # input_sh fits the published basis, signal or fODF

    def record(self) -> dict:
        meta = self.meta
        return {"model": "ddtracking", "variant": meta["config"]["variant"], "weights": meta["path"],
                "weights_sha256": meta["sha256"], "input": meta.get("input"), **self.domain}


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
    learned = {"sampler_steps": options.sampler_steps, "stochastic": options.stochastic,
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

