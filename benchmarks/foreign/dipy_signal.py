"""Foreign signal: every voxel's DWI from DIPY's ``dipy.sims.voxel``, not from difftract.

The geometry (per-voxel fibre fractions and directions, the tissue mask, the CSF share)
comes from difftract's voxelizer; the signal equations, their diffusivities and the noise
are DIPY's and this module's, unlike :mod:`difftract.phantom.signal` (stick + zeppelin +
isotropic, bias field):

- ``tensor``: each fibre population is a tensor (``multi_tensor``) whose eigenvalues drift
  smoothly across the phantom between two profiles; grey matter and CSF are isotropic
  tensors (balls), all in one ``multi_tensor`` call per voxel with S0-weighted fractions.
- ``sticks``: the fibre tissue is ``sticks_and_ball`` (one stick per population plus a
  ball of the same diffusivity); grey matter and CSF balls are added.

Voxels without fibre are a mix of the two balls, computed once with ``single_tensor``.
Rician noise is DIPY's ``add_noise`` with SNR = S0 of white matter / sigma.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from dipy.core.gradients import gradient_table
from dipy.sims.voxel import add_noise, multi_tensor, single_tensor, sticks_and_ball

from difftract.errors import ConfigError
from difftract.io.gradients import B0_THRESHOLD

MODELS = ("tensor", "sticks")


@dataclass
class ForeignTissue:
    """Compartments of the foreign signal (diffusivities in mm^2/s), none of them difftract's."""

    evals_a: tuple[float, float, float] = (1.5e-3, 0.35e-3, 0.35e-3)   # fibre tensor, one end of the drift
    evals_b: tuple[float, float, float] = (1.8e-3, 0.2e-3, 0.2e-3)     # ... and the other
    d_stick: float = 2.0e-3        # sticks-and-ball diffusivity (sticks and their ball)
    stick_share: float = 0.7       # sticks' share of the fibre tissue in the ``sticks`` model
    d_gm: float = 0.9e-3           # grey-matter ball
    d_csf: float = 2.5e-3          # CSF ball
    s0_wm: float = 500.0           # b0 of fibre tissue: the SNR reference
    s0_gm: float = 600.0
    s0_csf: float = 1100.0

    def __post_init__(self):
        if not 0.0 < self.stick_share <= 1.0:
            raise ConfigError(f"stick_share must be in (0, 1], got {self.stick_share}")
        values = (*self.evals_a, *self.evals_b, self.d_stick, self.d_gm, self.d_csf,
                  self.s0_wm, self.s0_gm, self.s0_csf)
        if min(values) <= 0:
            raise ConfigError("foreign tissue diffusivities and S0 values must be positive")


@dataclass
class VoxelCompartments:
    """Everything that sets each voxel's foreign signal (flat over the grid).

    Attributes
    ----------
    fibre : (V, 3) volume fractions of up to three fibre populations
    directions : (V, 3, 3) their unit directions, data-array frame
    evals : (V, 3) the fibre tensor's eigenvalues (``tensor`` model)
    gm, csf : (V,) volume fractions of grey matter and CSF
    """

    fibre: np.ndarray
    directions: np.ndarray
    evals: np.ndarray
    gm: np.ndarray
    csf: np.ndarray


def compartments(fractions: np.ndarray, peaks: np.ndarray, brain: np.ndarray, csf_share: np.ndarray | None,
                 tissue: ForeignTissue, drift: np.ndarray) -> VoxelCompartments:
    """Per-voxel compartments from a phantom's fractions (X,Y,Z,3) and peaks (X,Y,Z,3,3).

    ``drift`` (X,Y,Z) in [0, 1] mixes the two fibre eigenvalue profiles; ``csf_share`` is
    the CSF part of the non-fibre tissue (None: none). Outside ``brain`` nothing.
    """
    fibre = fractions.reshape(-1, 3).astype(np.float64)
    directions = peaks.reshape(-1, 3, 3).astype(np.float64)
    norms = np.linalg.norm(directions, axis=-1, keepdims=True)
    directions = np.divide(directions, norms, out=np.zeros_like(directions), where=norms > 0)
    rest = np.clip(1.0 - fibre.sum(axis=1), 0.0, 1.0) * brain.reshape(-1)
    share = np.zeros_like(rest) if csf_share is None else np.clip(csf_share.reshape(-1), 0.0, 1.0)
    w = drift.reshape(-1, 1)
    evals = (1.0 - w) * np.asarray(tissue.evals_a) + w * np.asarray(tissue.evals_b)
    return VoxelCompartments(fibre, directions, evals, rest * (1.0 - share), rest * share)


def voxel_signal(gtab, c: VoxelCompartments, v: int, tissue: ForeignTissue, model: str) -> np.ndarray:
    """DIPY's noise-free signal of voxel ``v`` (one that holds fibre)."""
    pops = np.flatnonzero(c.fibre[v] > 0)
    iso = [(c.gm[v], tissue.d_gm, tissue.s0_gm), (c.csf[v], tissue.d_csf, tissue.s0_csf)]
    iso = [(f, d, s0) for f, d, s0 in iso if f > 0]
    if model == "tensor":
        weights = [c.fibre[v, k] * tissue.s0_wm for k in pops] + [f * s0 for f, _, s0 in iso]
        s0 = float(np.sum(weights))
        mevals = [c.evals[v]] * len(pops) + [(d, d, d) for _, d, _ in iso]
        # an isotropic tensor has any frame: its direction entry is a placeholder
        angles = [c.directions[v, k] for k in pops] + [np.array([0.0, 0.0, 1.0])] * len(iso)
        signal, _ = multi_tensor(gtab, np.array(mevals), S0=s0, angles=np.array(angles),
                                 fractions=100.0 * np.asarray(weights) / s0, snr=None)
        return signal
    f_fibre = float(c.fibre[v, pops].sum())
    sticks = 100.0 * tissue.stick_share * c.fibre[v, pops] / f_fibre
    signal, _ = sticks_and_ball(gtab, d=tissue.d_stick, S0=tissue.s0_wm * f_fibre,
                                angles=c.directions[v, pops], fractions=sticks, snr=None)
    for f, d, s0 in iso:
        signal = signal + f * s0 * single_tensor(gtab, S0=1.0, evals=np.array([d, d, d]))
    return signal


def foreign_signal(bvals: np.ndarray, bvecs: np.ndarray, c: VoxelCompartments, tissue: ForeignTissue,
                   model: str = "tensor") -> np.ndarray:
    """Noise-free signal (V, N) of every voxel: DIPY per fibre voxel, a ball mix elsewhere."""
    if model not in MODELS:
        raise ConfigError(f"unknown foreign signal model {model!r}; choose {' or '.join(MODELS)}")
    gtab = gradient_table(bvals, bvecs=bvecs, b0_threshold=B0_THRESHOLD)
    ball_gm = single_tensor(gtab, S0=1.0, evals=np.full(3, tissue.d_gm))
    ball_csf = single_tensor(gtab, S0=1.0, evals=np.full(3, tissue.d_csf))
    out = (np.outer(c.gm * tissue.s0_gm, ball_gm) + np.outer(c.csf * tissue.s0_csf, ball_csf))
    for v in np.flatnonzero(c.fibre.sum(axis=1) > 0):
        out[v] = voxel_signal(gtab, c, v, tissue, model)
    return out


def add_dipy_noise(data: np.ndarray, snr: float | None, s0: float, rng: np.random.Generator) -> np.ndarray:
    """DIPY's Rician noise on the whole volume (sigma = ``s0`` / ``snr``); None: unchanged."""
    return data if snr is None else add_noise(data, snr, s0, noise_type="rician", rng=rng)
