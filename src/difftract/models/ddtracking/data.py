"""DDTracking training data: subjects, streamline samples and the trainer's task.

A subject directory (DESIGN) gives the input volume, the SH coefficients (descoteaux07,
lmax 6) of its b0-normalised DWI (:func:`signal_sh`, the paper's input) or of its CSD fODF
(:func:`fodf_sh`, the model's ``input`` option; :func:`input_sh` picks), and its reference tractogram
``tractogram.{trk,tck,trx}``, whose streamlines are resampled to the tracking step in
voxel space (:func:`resample`). Both are cached per subject (``.npz``, keyed by the input
files and settings), so a second run starts at once.

A sample is a window of one streamline, in one of its two orientations, a pure function
of (seed, epoch, index). A model trained on clean streamlines alone learns to trust the
path so far, and once its own small errors feed back at tracking time it drifts off the
bundle within a few steps (exposure bias). So the samples show it the states tracking
produces and how to leave them:

- the inputs are the points but the last, displaced across the streamline by a smooth
  random offset (an AR(1) process along it: standard deviation ``jitter`` voxels per axis,
  correlation ``jitter_corr`` from one point to the next, the component along the local
  tangent removed), with their 3x3x3 SH neighbourhoods;
- the targets are the unit vectors from each displaced point to the next clean point, so
  the model learns to steer back;
- the previous direction of each point is the move that reached it (from the previous
  displaced point), as at tracking time; at the first point it is the clean tangent turned
  by a random angle (standard deviation ``seed_angle`` degrees), as the seed direction is an
  estimate.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.signal import lfilter
from torch.nn import functional as F

from ...errors import ConfigError, InputError
from ...io.atomic import atomic_file
from ...reconst.sh import SHModel, shells
from ...training.dataset import EpochDataset
from . import diffusion
from .augment import grid_symmetries_for
from .consistency import consistent_loss, random_symmetry
from .features import neighbourhood

log = logging.getLogger("difftract")
TRACTOGRAMS = ("tractogram.trk", "tractogram.tck", "tractogram.trx")
TARGET_SHELL = 1000.0     # the SH is fitted to the shell nearest this b-value
FODF_SCALE = 2.0 * np.sqrt(np.pi)   # fODF SH times this: the first coefficient is the fODF's integral
INPUT_DESCRIPTIONS = {"signal": "SH descoteaux07 lmax 6 of the b0-normalised shell nearest b=1000",
                      "fodf": "CSD fODF SH descoteaux07 lmax 6 of the highest shell, times 2 sqrt(pi)"}


def signal_sh_shell(bvals) -> float:
    """The shell DDTracking reads: the one nearest b = 1000."""
    found = shells(bvals)
    if len(found) == 0:
        raise ConfigError("the scan has no diffusion-weighted volume")
    return float(found[np.argmin(np.abs(found - TARGET_SHELL))])


def signal_sh(dwi, lmax: int = 6, device="cpu") -> np.ndarray:
    """SH coefficients ``(X, Y, Z, m)`` float32 of the b0-normalised shell nearest b = 1000 (0 outside the mask)."""
    shell = signal_sh_shell(dwi.bvals)
    fit = SHModel(dwi.gtab, lmax=lmax, legacy=False, shell=shell).fit(dwi.signal, dwi.mask, device=device,
                                                                       dtype="float32", progress=False)
    return fit.coeffs.astype(np.float32)


def fodf_sh(dwi, lmax: int = 6, device="cpu") -> np.ndarray:
    """CSD fODF SH coefficients ``(X, Y, Z, m)`` float32, scaled so that the first is the fODF's integral.

    The fit is the classical rules' (:class:`~difftract.reconst.csd.CsdModel`: the highest
    shell, the response estimated from the scan, descoteaux07) at ``lmax``. Its response
    carries S0, so a voxel of that single fibre has an fODF of integral 1 whatever the
    scanner's gain, b-value or tissue diffusivities; times ``2 sqrt(pi)`` the first
    coefficient is that integral (the apparent fibre density), about 1 in white matter, the
    scale of the signal SH. 0 outside the mask.
    """
    from ...reconst.csd import CsdModel

    fit = CsdModel(dwi.gtab, lmax=lmax, legacy=False).fit(dwi.signal, dwi.mask, device=device, dtype="float32",
                                                         progress=False)
    return fodf_input(fit.coeffs)


def fodf_input(coeffs: np.ndarray) -> np.ndarray:
    """A CSD fit's coefficients as a network of the fODF reads them: times :data:`FODF_SCALE`, float32."""
    return (coeffs * FODF_SCALE).astype(np.float32)


def input_sh(dwi, input: str = "signal", lmax: int = 6, device="cpu") -> np.ndarray:
    """What a network of ``config.input`` reads: :func:`signal_sh` or :func:`fodf_sh` of the scan."""
    if input == "signal":
        return signal_sh(dwi, lmax, device)
    if input == "fodf":
        return fodf_sh(dwi, lmax, device)
    raise ConfigError(f"unknown DDTracking input {input!r}; expected signal or fodf")


def input_key(input: str) -> dict:
    """The input's part of a cache or pool key: none for the signal, so keys made before the option still match."""
    return {} if input == "signal" else {"input": input}


def resample(streamline: np.ndarray, step: float) -> np.ndarray:
    """Points every ``step`` along the polyline (arc length), from its first point; the tail shorter than a step is dropped."""
    s = np.asarray(streamline, dtype=np.float64)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(s, axis=0), axis=1))])
    at = np.arange(0.0, arc[-1] + 1e-9, step)
    return np.stack([np.interp(at, arc, s[:, i]) for i in range(3)], axis=1).astype(np.float32)


@dataclass
class DDSubject:
    """A subject prepared for training: its SH volume and resampled streamlines (voxel space)."""

    name: str
    sh: torch.Tensor                 # (X, Y, Z, m) float32
    streamlines: list[np.ndarray]    # (n_i, 3) float32, consecutive points ``step`` voxels apart


def find_tractogram(directory: Path) -> Path:
    for name in TRACTOGRAMS:
        if (directory / name).is_file():
            return directory / name
    raise InputError(directory, f"no reference tractogram ({', '.join(TRACTOGRAMS)}) in the subject directory")


def prepare_subject(directory: str | Path, *, step: float = 1.0, lmax: int = 6, min_points: int = 3,
                    cache_dir: str | Path | None = None, input: str = "signal") -> DDSubject:
    """Load (or read from ``cache_dir``) a subject's SH volume and resampled reference streamlines."""
    from ...io.dwi import load_subject
    from ...io.tractogram import load_tractogram

    directory = Path(directory)
    tract_path = find_tractogram(directory)
    cache = _cache_path(directory, tract_path, step, lmax, cache_dir, input)
    if cache is not None and cache.is_file():
        try:
            with np.load(cache) as z:
                arrays = {k: z[k] for k in ("points", "lengths", "sh")}
            return subject_from_arrays(directory.name, arrays)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            log.warning("unreadable feature cache %s (%s): rebuilding it", cache, exc)
    dwi = load_subject(directory)
    tractogram = load_tractogram(tract_path, reference=(dwi.affine, dwi.shape))
    arrays = subject_arrays(dwi, tractogram.streamlines, step=step, lmax=lmax, min_points=min_points, name=tract_path,
                            input=input)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(cache, force=True) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return subject_from_arrays(directory.name, arrays)


def subject_arrays(dwi, streamlines, *, step: float = 1.0, lmax: int = 6, min_points: int = 3,
                   name: str | Path | None = None, input: str = "signal") -> dict[str, np.ndarray]:
    """What training reads of a scan and its reference streamlines (voxel space): the SH volume
    (:func:`input_sh`) and the streamlines resampled to ``step`` voxels, packed as ``points`` and ``lengths``."""
    sh = input_sh(dwi, input, lmax)
    resampled = [r for r in (resample(s, step) for s in streamlines) if len(r) >= min_points]
    if not resampled:
        raise InputError(name, f"no streamline is {min_points} steps of {step} voxel long")
    return {"points": np.concatenate(resampled), "lengths": np.array([len(s) for s in resampled]), "sh": sh}


def phantom_arrays(phantom, *, step: float = 1.0, lmax: int = 6, min_points: int = 3,
                   input: str = "signal") -> dict[str, np.ndarray]:
    """:func:`subject_arrays` of a simulated phantom and its ground truth (a subject stream's preparation)."""
    from ...training.recipe import phantom_dwi

    return subject_arrays(phantom_dwi(phantom), phantom.streamlines, step=step, lmax=lmax, min_points=min_points,
                          input=input)


def subject_from_arrays(name: str, arrays: dict[str, np.ndarray]) -> DDSubject:
    """A :class:`DDSubject` of :func:`subject_arrays` (or of the feature cache, which holds the same)."""
    points, lengths = arrays["points"], arrays["lengths"]
    return DDSubject(name, torch.from_numpy(arrays["sh"]), np.split(points, np.cumsum(lengths)[:-1]))


def _cache_path(directory: Path, tract_path: Path, step: float, lmax: int, cache_dir, input: str) -> Path | None:
    if cache_dir is None:
        return None
    files = sorted(p for p in directory.iterdir() if p.name.startswith(("dwi.", "mask.")) or p == tract_path)
    key = json.dumps({"dir": str(directory.resolve()), "step": step, "lmax": lmax, "shell": TARGET_SHELL,
                      "files": [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files], **input_key(input)})
    return Path(cache_dir) / f"{directory.name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


class StreamlineDataset(EpochDataset):
    """Streamline windows with their features, a pure function of (seed, epoch, index).

    Parameters
    ----------
    subjects : list of DDSubject
    n_samples : int
        Windows per epoch.
    window : int
        Most input points per sample (long streamlines give a random window; the GRU
        starts from zero there, as it does at a seed).
    jitter : float
        Standard deviation (voxels) of the offset of the input points; 0 for none.
    jitter_corr : float
        Correlation of consecutive offsets, in [0, 1).
    seed_angle : float
        Standard deviation (degrees) of the error of the first point's previous direction.
    per_epoch : bool
        New windows every epoch (training) or the same ones (validation).
    augment : bool
        Turn each window by one of the 48 symmetries of the voxel grid (:mod:`.augment`).
    """

    def __init__(self, subjects: list[DDSubject], n_samples: int, seed: int = 0, window: int = 64,
                 jitter: float = 0.3, jitter_corr: float = 0.7, seed_angle: float = 15.0, per_epoch: bool = True,
                 augment: bool = False):
        if not subjects:
            raise ConfigError("no subjects")
        if window < 1 or jitter < 0 or n_samples < 1 or not 0 <= jitter_corr < 1 or seed_angle < 0:
            raise ConfigError(f"need window >= 1, jitter >= 0, 0 <= jitter_corr < 1, seed_angle >= 0 and "
                              f"n_samples >= 1, got {window}, {jitter}, {jitter_corr}, {seed_angle}, {n_samples}")
        super().__init__(n_samples, seed, per_epoch)
        self.subjects = subjects
        self.window, self.jitter, self.jitter_corr, self.seed_angle = window, jitter, jitter_corr, seed_angle
        self.symmetries = grid_symmetries_for(int(subjects[0].sh.shape[-1])) if augment else None

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = self.rng(index)
        s = self.subjects[index % len(self.subjects)]
        pts = s.streamlines[rng.integers(len(s.streamlines))]
        if rng.random() < 0.5:
            pts = pts[::-1]
        if len(pts) > self.window + 1:
            start = rng.integers(len(pts) - self.window)
            pts = pts[start:start + self.window + 1]
        pts = torch.from_numpy(np.ascontiguousarray(pts))
        tangents = F.normalize(pts[1:] - pts[:-1], dim=-1)
        offsets = torch.from_numpy(self._offsets(rng, len(pts) - 1))
        inputs = pts[:-1] + offsets - (offsets * tangents).sum(-1, keepdim=True) * tangents   # across only
        target = F.normalize(pts[1:] - inputs, dim=-1)
        first = turn(tangents[0].numpy(), self.seed_angle, rng)
        prev = torch.cat([torch.from_numpy(first)[None], F.normalize(inputs[1:] - inputs[:-1], dim=-1)])
        patches = neighbourhood(s.sh, inputs)
        if self.symmetries is not None:
            patches, prev, target = self.symmetries.apply(int(rng.integers(len(self.symmetries))), patches, prev,
                                                          target)
        return {"patches": patches, "prev": prev, "target": target}

    def _offsets(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """AR(1) offsets ``(n, 3)``: stationary, standard deviation ``jitter``, lag-1 correlation ``jitter_corr``."""
        out = rng.standard_normal((n, 3)) * self.jitter          # out[0] is drawn from the stationary law
        rho, scale = self.jitter_corr, np.sqrt(1.0 - self.jitter_corr ** 2)
        if n > 1:   # out[i] = rho out[i-1] + scale noise[i]
            out[1:] = lfilter([scale], [1.0, -rho], out[1:], axis=0, zi=rho * out[:1])[0]
        return out.astype(np.float32)


def turn(direction: np.ndarray, std_deg: float, rng: np.random.Generator) -> np.ndarray:
    """``direction`` turned by an angle ~ |N(0, std)| about a random perpendicular axis."""
    if std_deg == 0:
        return direction.astype(np.float32)
    axis = np.cross(direction, rng.standard_normal(3))
    axis /= max(np.linalg.norm(axis), 1e-12)
    angle = np.radians(std_deg) * rng.standard_normal()
    out = direction * np.cos(angle) + np.cross(axis, direction) * np.sin(angle)
    return (out / np.linalg.norm(out)).astype(np.float32)


def collate(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Pack samples streamline after streamline, with their ``lengths``."""
    out = {k: torch.cat([s[k] for s in samples]) for k in ("patches", "prev", "target")}
    out["lengths"] = torch.tensor([len(s["target"]) for s in samples])
    return out


class DDTrackingTask:
    """The trainer's task: the decoupled diffusion loss, or SmoothL1 on the direction (regression variants).

    With ``equivariance`` > 0 (generative variants), each batch also runs turned by a random
    grid symmetry, with that weight on the equivariance penalty (:mod:`.consistency`).

    Also reports the mean angle (degrees) between the target and the model's one-shot
    estimate (``-h_pred`` at the drawn ``k``, or the regressed direction).
    """

    collate = staticmethod(collate)

    def __init__(self, config: diffusion.DiffusionConfig | None = None, equivariance: float = 0.0):
        self.config = config or diffusion.DiffusionConfig()
        self.equivariance = float(equivariance)   # weight of :mod:`.consistency`'s penalty; 0: none

    def loss(self, model, batch, generator=None) -> tuple[torch.Tensor, dict[str, float]]:
        target = batch["target"]
        generative = getattr(model, "module", model).config.generative
        if generative:
            P = len(target)
            k = diffusion.sample_k(P, self.config.k_min, generator, target.device, target.dtype)
            eps = torch.randn(P, 3, generator=generator, device=target.device, dtype=target.dtype)
            if self.equivariance > 0:
                g = random_symmetry(generator, target.device)
                loss, estimate, parts = consistent_loss(model, batch, k, eps, self.equivariance,
                                                        self.config.max_weight, g)
            else:
                out = model(batch["patches"], batch["prev"], batch["lengths"], diffusion.diffuse(target, k, eps), k)
                loss, parts = diffusion.decoupled_loss(out["h"], out["eps"], -target, eps, k, self.config.max_weight)
                estimate = -out["h"]
        else:
            out = model(batch["patches"], batch["prev"], batch["lengths"])
            estimate = out["direction"]
            loss, parts = F.smooth_l1_loss(estimate, target), {}
        cos = (F.normalize(estimate.detach().float(), dim=-1) * target).sum(-1).clamp(-1, 1)
        return loss, {**parts, "angle_deg": float(torch.rad2deg(torch.acos(cos)).mean())}
