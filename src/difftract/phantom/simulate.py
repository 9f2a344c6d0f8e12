"""Simulate a ground-truth phantom in memory: DWI, masks, bundles, streamlines.

:func:`simulate` draws everything from one seed through independent streams (geometry,
fibre sampling, scheme, S0 field, noise and, for randomised phantoms, acquisition,
tissue and dispersion), so that changing the SNR, say, does not move the fibres.
:func:`difftract.phantom.write.save_phantom` writes the result to disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from dipy.tracking.streamline import set_number_of_points
from scipy import sparse

from ..errors import ConfigError
from ..eval.traversal import endpoint_voxels, traversed_voxels
from ..io.gradients import B0_THRESHOLD
from . import voxelize
from .acquisition import Acquisition, AcquisitionRanges, AcquisitionSampler
from .geometry import Tube, disc_positions, make_tube
from .presets import SCALABLE_PRESETS, Layout
from .registry import get_layout
from .randomize import TissueDraw, TissueRanges, TissueSampler, watson_axes
from .signal import (Tissue, add_coil_noise, add_rician_noise, bias_field, fibre_signal, isotropic_signal,
                     make_scheme)

MAX_POPULATIONS = 3
LEGACY_CHUNK = 200_000        # fibre samples per signal chunk before per-sample tissue (see _chunks)
CHUNK_ELEMENTS = 8_000_000    # samples x volumes per chunk: ~64 MB per temporary array


@dataclass
class PhantomConfig:
    """Everything that defines a phantom. Defaults match ``difftract simulate``."""

    preset: str = "fibercup"
    seed: int = 0
    snr: float | None = 20.0                  # b0 SNR in fibre tissue; None: no noise
    bvals: tuple[float, ...] = (1000.0,)      # one value per shell
    ndirs: int | tuple[int, ...] = 32         # directions per shell
    nb0: int = 2
    scheme: tuple[np.ndarray, np.ndarray] | None = None  # given (bvals, bvecs in the array frame)
    # also simulate the noise-free signal on this scheme (bvals, bvecs), from the same fibres,
    # tissue and dispersion draws: Phantom.noise_free, e.g. a learned model's exact target
    noise_free_scheme: tuple[np.ndarray, np.ndarray] | None = None
    streamlines_per_bundle: int | None = None  # None: the preset's default
    voxel_size: float | None = None           # mm; None: the preset's default (2); SCALABLE_PRESETS only
    step_mm: float = 1.0                      # ground-truth streamline step
    supersample: int = 3                      # sub-samples per voxel edge
    radiological: bool = False                # negative-determinant (LAS) affine
    angles: tuple[float, ...] = (90.0,)       # crossing preset
    n_bundles: int | None = None              # random presets; None: 6 for random, 12-30 for brain-random
    roi_depth_mm: float | None = None         # end-region depth; None: two voxels
    mask_threshold: float = 0.1               # bundle mask: fibre fraction >= this, or traversed by its GT
    tissue: Tissue = field(default_factory=Tissue)
    # randomize: draw the tissue (per bundle and voxel) and the acquisition (scheme, SNR, coils,
    # bias, voxel size) from the seed within these ranges; a given scheme or voxel_size is kept,
    # snr=None keeps the phantom noise-free, and `tissue` is not used
    randomize: bool = False
    tissue_ranges: TissueRanges = field(default_factory=TissueRanges)
    acquisition_ranges: AcquisitionRanges = field(default_factory=AcquisitionRanges)

    def __post_init__(self):
        def positive(name, value):
            if not (np.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a finite positive number, got {value}")

        if self.snr is not None:
            positive("snr", self.snr)
        positive("step_mm", self.step_mm)
        if not (isinstance(self.seed, (int, np.integer)) and self.seed >= 0):
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed}")
        if not 0.0 < self.mask_threshold <= 1.0:
            raise ConfigError(f"mask_threshold must be in (0, 1], got {self.mask_threshold}")
        if not 1 <= self.supersample <= 8:
            raise ConfigError(f"supersample must be between 1 and 8, got {self.supersample}")
        if self.streamlines_per_bundle is not None and self.streamlines_per_bundle < 1:
            raise ConfigError(f"streamlines_per_bundle must be at least 1, got {self.streamlines_per_bundle}")
        if self.n_bundles is not None and self.n_bundles < 1:
            raise ConfigError(f"n_bundles must be at least 1, got {self.n_bundles}")
        if self.roi_depth_mm is not None:
            positive("roi_depth_mm", self.roi_depth_mm)
        if self.voxel_size is not None:
            positive("voxel_size", self.voxel_size)
            if self.preset not in SCALABLE_PRESETS:
                raise ConfigError(f"voxel_size: preset {self.preset!r} has a fixed voxel size; "
                                  f"it can be set for {', '.join(SCALABLE_PRESETS)}")
        if self.scheme is not None:
            bvals, _ = _checked_scheme("scheme", self.scheme)
            if not np.any(bvals <= B0_THRESHOLD):
                raise ConfigError(f"scheme has no b0 volume (b <= {B0_THRESHOLD:g})")
        if self.noise_free_scheme is not None:
            _checked_scheme("noise_free_scheme", self.noise_free_scheme)


def _checked_scheme(name: str, scheme) -> tuple[np.ndarray, np.ndarray]:
    """(bvals, bvecs) of a given scheme as float arrays; ConfigError unless N finite b >= 0 and (N, 3) directions."""
    try:
        bvals, bvecs = (np.asarray(a, dtype=np.float64) for a in scheme)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be (bvals, bvecs): N b-values and (N, 3) directions") from None
    if bvals.ndim != 1 or bvecs.shape != (len(bvals), 3) or not len(bvals):
        raise ConfigError(f"{name} needs N b-values and (N, 3) directions, got {bvals.shape} and {bvecs.shape}")
    if not (np.all(np.isfinite(bvals)) and np.all(np.isfinite(bvecs))) or np.any(bvals < 0):
        raise ConfigError(f"{name} b-values and directions must be finite and b >= 0")
    return bvals, bvecs


@dataclass
class BundleTruth:
    """Ground truth of one bundle: streamlines (voxel space) and voxel regions."""

    name: str
    streamlines: list[np.ndarray]
    mask: np.ndarray
    head: np.ndarray
    tail: np.ndarray


@dataclass
class Phantom:
    """A simulated scan with its ground truth (arrays on the phantom's grid)."""

    config: PhantomConfig
    affine: np.ndarray
    data: np.ndarray            # (X, Y, Z, N) float32
    bvals: np.ndarray
    bvecs: np.ndarray           # (N, 3), data-array frame
    mask: np.ndarray            # brain (tissue domain), bool
    wm: np.ndarray              # union of bundle masks, bool
    bundles: list[BundleTruth]
    fractions: np.ndarray       # (X, Y, Z, 3) volume fractions of the largest populations
    peaks: np.ndarray           # (X, Y, Z, 3, 3) their unit directions, data-array frame
    acquisition: Acquisition | None = None  # what a randomised phantom drew
    tissue_draw: TissueDraw | None = None
    noise_free: np.ndarray | None = None    # (X, Y, Z, M) on config.noise_free_scheme, S0 field, no noise

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape[:3])

    @property
    def voxel_size(self) -> float:
        return float(np.linalg.norm(self.affine[:3, 0]))

    @property
    def streamlines(self) -> list[np.ndarray]:
        return [s for b in self.bundles for s in b.streamlines]

    def summary(self) -> dict:
        """Counts and sizes a person checks first."""
        n_pop = np.sum(self.fractions > 0.1, axis=-1)
        lengths = [np.linalg.norm(np.diff(s, axis=0), axis=1).sum() * self.voxel_size for s in self.streamlines]
        return {
            "preset": self.config.preset, "seed": self.config.seed, "shape": list(self.shape),
            "voxel_size_mm": self.voxel_size, "volumes": int(self.data.shape[3]),
            "shells": sorted({int(round(b)) for b in self.bvals if b > 50}),
            "snr": self.config.snr if self.acquisition is None else self.acquisition.snr,
            "mask_voxels": int(self.mask.sum()), "wm_voxels": int(self.wm.sum()),
            "crossing_voxels": int(np.sum(n_pop >= 2)),
            "streamlines": len(lengths), "mean_length_mm": float(np.mean(lengths)) if lengths else 0.0,
            "bundles": {b.name: {"streamlines": len(b.streamlines), "mask_voxels": int(b.mask.sum()),
                                 "head_voxels": int(b.head.sum()), "tail_voxels": int(b.tail.sum())}
                        for b in self.bundles},
            **({} if self.tissue_draw is None else {"randomized": {
                "acquisition": self.acquisition.record(), "tissue": self.tissue_draw.record(),
                "bundle_order": [b.name for b in self.bundles]}}),
        }


def phantom_affine(shape: tuple[int, int, int], voxel_size: float, radiological: bool,
                   origin: np.ndarray | None = None) -> np.ndarray:
    """Isotropic affine; x reversed (det < 0) if radiological.

    Without ``origin`` the grid is centred on the world origin; with it (world mm of voxel
    0, e.g. MNI) the grid covers the same world box. A radiological phantom is the same
    array with x reversed in the world, so it is the left-right mirror image: a template
    phantom's "left" bundles then lie at world x > 0 (for testing conventions, not anatomy).
    """
    affine = np.diag([voxel_size, voxel_size, voxel_size, 1.0])
    if radiological:
        affine[0, 0] = -voxel_size
    if origin is None:
        affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    else:
        affine[:3, 3] = origin
        if radiological:
            affine[0, 3] = origin[0] + (shape[0] - 1) * voxel_size
    return affine


def simulate(config: PhantomConfig | None = None, layout: Layout | None = None, signal: bool = True) -> Phantom:
    """Build a phantom: layout, signal, noise and ground truth.

    ``layout`` replaces the preset's (a hand-made geometry, e.g. a test set's); the seed
    still drives fibre sampling, scheme and noise, and ``config.preset`` only names it.
    ``signal=False`` skips the signal, bias and noise (the data are zeros): for a caller
    that brings its own signal model to this geometry and ground truth. Every random
    stream is independent, so the rest is what ``signal=True`` gives.
    """
    config = config or PhantomConfig()
    # new streams go at the end: spawn(k)'s first children do not depend on k, so phantoms
    # without randomize stay bit for bit what they were
    geo_rng, fib_rng, scheme_rng, bias_rng, noise_rng, acq_rng, tissue_rng, dispersion_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(8))
    acquisition = _acquisition(config, acq_rng) if config.randomize else None
    layout = _layout(config, geo_rng, acquisition) if layout is None else layout
    shape, vs = layout.shape, layout.voxel_size
    n_vox = int(np.prod(shape))
    if config.scheme is not None:
        bvals, bvecs = (np.asarray(a, dtype=np.float64) for a in config.scheme)
    elif acquisition is not None:
        bvals, bvecs = make_scheme(acquisition.bvals, acquisition.ndirs, acquisition.nb0, scheme_rng,
                                   start="lattice")
    else:
        bvals, bvecs = make_scheme(config.bvals, config.ndirs, config.nb0, scheme_rng)

    tubes = [make_tube(b) for b in layout.bundles]
    n = config.supersample
    coverages = [voxelize.cover(t, shape, vs, n) for t in tubes]
    voxelize.share_overlaps(coverages, n)
    centres = np.stack(np.meshgrid(*[np.arange(k) for k in shape], indexing="ij"), -1).reshape(-1, 3) * vs
    fibre = np.stack([voxelize.fractions(c, n_vox) for c in coverages], axis=1)  # (V, B)
    brain = layout.domain(centres) | (fibre.sum(axis=1) > 0)  # tubes may clip border voxels
    background = np.clip(1.0 - fibre.sum(axis=1), 0.0, 1.0) * brain
    csf = np.zeros(n_vox)
    if layout.isotropic is not None:
        # The fibres take the white matter's place; what they leave is grey matter and CSF in
        # the template's proportions (white matter the bundles do not reach stays GM-like).
        gm = np.clip(layout.isotropic["gm"].reshape(-1), 0.0, 1.0)
        iso_csf = np.clip(layout.isotropic["csf"].reshape(-1), 0.0, 1.0)
        share = np.divide(iso_csf, gm + iso_csf, out=np.zeros(n_vox), where=gm + iso_csf > 0)
        csf = background * share
        background = background - csf
    draw = TissueSampler(config.tissue_ranges).draw(tissue_rng, len(tubes), shape) if config.randomize else None
    tissue = config.tissue if draw is None else draw.tissue
    noise_free = None
    if signal and config.noise_free_scheme is not None:
        # one pass over both schemes: the same sub-voxel fibres, tissue and dispersion draws
        extra_bvals, extra_bvecs = (np.asarray(a, dtype=np.float64) for a in config.noise_free_scheme)
        # (the dispersion draws are chunked over all volumes: a phantom with a twin is not bit for
        # bit the same seed simulated without one, when its tissue is randomised)
        data, noise_free = _noisy_signal(coverages, background, csf, np.concatenate([bvals, extra_bvals]),
                                         np.concatenate([bvecs, extra_bvecs]), tissue, draw, shape, config,
                                         acquisition, dispersion_rng, bias_rng, noise_rng, noisy_volumes=len(bvals))
    elif signal:
        data = _noisy_signal(coverages, background, csf, bvals, bvecs, tissue, draw, shape, config, acquisition,
                             dispersion_rng, bias_rng, noise_rng)
    else:
        data = np.zeros((*shape, len(bvals)), dtype=np.float32)

    depth = 2.0 * vs if config.roi_depth_mm is None else config.roi_depth_mm
    truths = [_bundle_truth(t, c, fibre[:, k], fib_rng, config, shape, depth, layout)
              for k, (t, c) in enumerate(zip(tubes, coverages))]
    wm = np.logical_or.reduce([b.mask for b in truths]) if truths else np.zeros(shape, bool)
    fractions, peaks = _top_populations(fibre, coverages, shape)
    affine = phantom_affine(shape, vs, config.radiological, layout.origin)
    return Phantom(config, affine, data.astype(np.float32, copy=False),
                   bvals, bvecs, brain.reshape(shape), wm, truths, fractions, peaks, acquisition, draw, noise_free)


def _noisy_signal(coverages, background, csf, bvals, bvecs, tissue, draw, shape, config: PhantomConfig,
                  acquisition: Acquisition | None, dispersion_rng, bias_rng, noise_rng,
                  noisy_volumes: int | None = None) -> np.ndarray:
    """The DWI (X, Y, Z, N): fibre, background and CSF signal, the S0 field, then noise.

    With ``noisy_volumes``: ``(noisy, noise_free)``, the first volumes with noise and the others
    without (float32), with no third copy of the signal.
    """
    n_vox = int(np.prod(shape))
    signal = _signal(coverages, background, bvals, bvecs, tissue, n_vox, draw, dispersion_rng)
    rows = np.flatnonzero(csf)   # in place, row by row: no second (voxels x volumes) array
    signal[rows] += np.outer(csf[rows] * tissue.s0_csf, isotropic_signal(bvals, tissue.d_csf))
    signal *= bias_field(shape, tissue.bias, bias_rng).reshape(-1)[:, None]
    data = signal.reshape(*shape, -1)
    if noisy_volumes is not None:
        noise_free = data[..., noisy_volumes:].astype(np.float32)
        noisy = np.ascontiguousarray(data[..., :noisy_volumes])
        del signal, data
        return _add_noise(noisy, tissue, config, acquisition, noise_rng), noise_free
    return _add_noise(data, tissue, config, acquisition, noise_rng)


def _add_noise(data: np.ndarray, tissue: Tissue, config: PhantomConfig, acquisition: Acquisition | None,
               noise_rng: np.random.Generator) -> np.ndarray:
    if acquisition is not None and acquisition.snr is not None:
        return add_coil_noise(data, tissue.s0_fibre / acquisition.snr, acquisition.coils, noise_rng,
                              dtype=np.float32)  # the phantom's dtype: no float64 copy of a brain
    if acquisition is None and config.snr is not None:
        return add_rician_noise(data, tissue.s0_fibre / config.snr, noise_rng)
    return data


def _acquisition(config: PhantomConfig, rng: np.random.Generator) -> Acquisition:
    """The drawn acquisition, less what the configuration fixes (the draw itself never changes)."""
    drawn = AcquisitionSampler(config.acquisition_ranges).draw(rng)
    if config.scheme is not None:
        drawn.bvals = drawn.ndirs = drawn.nb0 = None
    if config.snr is None:
        drawn.snr = drawn.coils = None
    if config.voxel_size is not None or config.preset not in SCALABLE_PRESETS:
        drawn.voxel_size = None
    return drawn


def _layout(config: PhantomConfig, rng: np.random.Generator, acquisition: Acquisition | None = None) -> Layout:
    kwargs = {}
    if config.streamlines_per_bundle is not None:
        kwargs["streamlines_per_bundle"] = config.streamlines_per_bundle
    voxel_size = config.voxel_size if acquisition is None or acquisition.voxel_size is None \
        else acquisition.voxel_size
    if voxel_size is not None:
        kwargs["voxel_size"] = voxel_size
    if config.preset == "crossing":
        kwargs["angles"] = tuple(config.angles)
    elif config.preset in ("random", "brain-random") and config.n_bundles is not None:
        kwargs["n_bundles"] = config.n_bundles
    return get_layout(config.preset, rng, **kwargs)


def _signal(coverages, background, bvals, bvecs, tissue: Tissue, n_vox: int, draw: TissueDraw | None = None,
            rng: np.random.Generator | None = None) -> np.ndarray:
    """Voxel signals (V, N): fibre samples summed by weight, plus background tissue.

    With a tissue ``draw``, every sample gets its bundle's parameters at its voxel and a
    Watson-dispersed direction (from ``rng``); without, all share ``tissue``.
    """
    out = np.outer(background * tissue.s0_background, isotropic_signal(bvals, tissue.d_background))
    for k, c in enumerate(coverages):
        for sl in _chunks(c.voxel, max(1, CHUNK_ELEMENTS // len(bvals))):
            rows = c.voxel[sl]
            if draw is None:
                attenuation = fibre_signal(c.direction[sl], bvals, bvecs, tissue)
            else:
                fibre = draw.fibre(k, rows)
                attenuation = fibre_signal(watson_axes(c.direction[sl], fibre.kappa, rng), bvals, bvecs, fibre)
            w = sparse.csr_matrix((c.weight[sl] * tissue.s0_fibre, (rows, np.arange(len(rows)))),
                                  shape=(n_vox, len(rows)))
            out += w @ attenuation
    return out


def _chunks(voxel: np.ndarray, size: int) -> list[slice]:
    """Slices of a coverage's samples (sorted by voxel) of about ``size`` samples at most.

    Cuts fall at every multiple of LEGACY_CHUNK, where the samples were always cut, and,
    when ``size`` is smaller, also between voxels near every multiple of ``size``. A
    voxel's samples are then still summed in one product, in the same order, so the
    phantoms of before are reproduced bit for bit, however many volumes they have.
    """
    n = len(voxel)
    cuts = set(range(0, n, LEGACY_CHUNK))
    if size < LEGACY_CHUNK and n > size:
        starts = np.flatnonzero(np.diff(voxel)) + 1  # first sample of each voxel but the first
        below = np.searchsorted(starts, np.arange(size, n, size), side="right") - 1
        cuts.update(int(starts[i]) for i in below[below >= 0])
    edges = sorted(cuts) + [n]
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def _bundle_truth(tube: Tube, c: voxelize.Coverage, fraction: np.ndarray, rng, config: PhantomConfig,
                  shape, depth, layout: Layout) -> BundleTruth:
    """Streamlines, mask and end regions of one bundle.

    The mask holds the voxels where the bundle's fibre fraction reaches
    ``config.mask_threshold`` and every voxel its streamlines pass through, so the
    ground truth stays inside its mask and voxels the tube only grazes do not count.
    """
    bundle, vs, step_mm = tube.bundle, layout.voxel_size, config.step_mm
    dense = tube.fibres(disc_positions(bundle.n_streamlines, rng))
    outside = ~layout.domain(dense.reshape(-1, 3))
    if outside.any():
        raise ConfigError(f"bundle {bundle.name!r} leaves the phantom's tissue domain")
    streamlines = []
    for fibre in dense:
        length = np.linalg.norm(np.diff(fibre, axis=0), axis=1).sum()
        n_points = max(2, int(round(length / step_mm)) + 1)
        streamlines.append((set_number_of_points(fibre, n_points) / vs).astype(np.float32))
    n_vox = int(np.prod(shape))
    mask = (fraction >= config.mask_threshold).reshape(shape) \
        | traversed_voxels(streamlines, shape)
    head, tail = (r.reshape(shape) for r in voxelize.end_regions(c, tube.length, depth, n_vox))
    for region, ends in ((head, [s[0] for s in streamlines]), (tail, [s[-1] for s in streamlines])):
        idx = endpoint_voxels(np.array(ends), shape)
        region[idx[:, 0], idx[:, 1], idx[:, 2]] = True
    return BundleTruth(bundle.name, streamlines, mask, head & mask, tail & mask)


def _top_populations(fibre: np.ndarray, coverages, shape) -> tuple[np.ndarray, np.ndarray]:
    """The (up to) three largest populations per voxel: fractions (X,Y,Z,3), directions (X,Y,Z,3,3).

    Only voxels holding fibre are sorted: a whole-brain grid is mostly background, and
    (voxels x bundles x 3) directions over all of it would dominate the memory.
    """
    used = np.flatnonzero(fibre.sum(axis=1) > 0)
    k = min(MAX_POPULATIONS, fibre.shape[1])
    directions = np.stack([voxelize.mean_directions(c, fibre.shape[0])[used] for c in coverages], axis=1)
    order = np.argsort(-fibre[used], axis=1)[:, :k]
    frac = np.take_along_axis(fibre[used], order, axis=1)
    dirs = np.take_along_axis(directions, order[:, :, None], axis=1) * (frac > 0)[:, :, None]
    fractions = np.zeros((fibre.shape[0], MAX_POPULATIONS))
    peaks = np.zeros((fibre.shape[0], MAX_POPULATIONS, 3))
    fractions[used, :k], peaks[used, :k] = frac, dirs
    return (fractions.reshape(*shape, MAX_POPULATIONS).astype(np.float32),
            peaks.reshape(*shape, MAX_POPULATIONS, 3).astype(np.float32))
