"""The noise bias of FA from a few-direction tensor fit, and its Monte-Carlo correction.

Noise biases FA: at b0 SNR 20, one b0 and six DWIs give an isotropic voxel an FA of
about 0.25 and a voxel of FA 0.3 one of 0.37 (sorting the eigenvalues spreads them), and at
high b they give a voxel of high FA a lower one (the Rician floor lifts the weakest DWI,
along the fibre). The bias depends on the true FA,
on ``b * MD`` (how far the DWIs fall towards the floor), on the voxel's SNR and on the
directions measured, and all four are known or estimated for each voxel. So it can be
simulated: :class:`FABiasTable` draws cylindrical tensors of each FA on a grid, in random
orientations, with Rician noise, fits them with the scan's own design, and tabulates the
mean fitted FA, ``h(FA; b MD, SNR)``. Inverting that monotone curve at a voxel's fitted FA,
``h^-1(FA_fit)``, gives an FA whose mean is the true FA to first order in the noise (the
method of moments; a bootstrap bias correction in closed form).

Why this and not a learned correction (issue 20): a network's FA is biased towards the
tissue it was trained on, and the sign of that bias per true-FA bin changed between our
simulator and DIPY's; the noise physics is the same for both, and a six-direction fit of a
noise-free signal is within about 0.02 of its shell's tensor on both, so a correction of
the noise alone transfers (``benchmarks/bench_qcgdti.py --fa-correction``: within 0.016 per
bin on both, against the network's 0.04-0.08). What it costs: the inverse curve is steeper
than 1, so the voxel-to-voxel scatter grows (the white-matter FA error per voxel is 1.0-1.6x
the plain fit's on the benchmark, 2x at b = 3000 or SNR 10), and below ``h(0)`` the estimate
is 0, so isotropic voxels keep a positive FA on average (about 0.1 at SNR 20). A mean over a
region, a bundle or a group is where it pays. Where a mean inversion falls short: where the
fitted FA's spread is wide against the curve's bend (true FA 0.2-0.4 at SNR 10: -0.03 to
-0.04), and where the DWIs along the fibre sit on the floor (b MD above 2: at b = 3000 and
SNR 20, -0.02 to -0.04 at FA 0.8-0.9 and up to +0.1 near FA 0.2 for b MD 3); see
:meth:`FABiasTable.invert` for a variant tried there.

What it assumes: magnitude (Rician) noise of one known standard deviation over the volume,
and a cylindrical tensor averaged over orientations (a voxel's orientation relative to the
six directions moves its own bias; over a bundle's voxels the orientations differ only when
the bundle bends). Multi-coil noise floors are higher than Rician at the same SNR.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
import torch
from dipy.core.gradients import gradient_table

from ..errors import ConfigError
from ..io.gradients import B0_THRESHOLD
from . import tensor as T
from .dti import TensorFit, TensorModel, fit_log_linear


MIN_FA = 0.01   # the corrected tensor's lowest FA: enough to keep its eigenvectors (see with_fa)
MIN_NOISE_VOXELS = 64   # masked voxels the noise estimate needs


@dataclass(frozen=True)
class FABiasConfig:
    """The simulation grid: true FA, ``b * MD`` and b0 SNR, and the draws per grid point."""

    fa: tuple[float, float, int] = (0.0, 0.95, 39)       # linear: start, stop, points
    b_md: tuple[float, float, int] = (0.15, 5.0, 12)     # geometric
    snr: tuple[float, float, int] = (3.0, 200.0, 14)     # geometric
    draws: int = 256                                     # orientations (each with its own noise) per point
    passes: int = 3                                      # inversions (see FABiasTable)
    seed: int = 0


def cylinder_eigenvalues(fa: torch.Tensor, md: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(l1, l2)`` of the prolate tensor ``diag(l1, l2, l2)`` with the given FA and MD.

    With ``l1 = MD (1 + 2k)`` and ``l2 = MD (1 - k)``, ``FA^2 = 9 k^2 / (3 + 6 k^2)``.
    """
    k = torch.sqrt(3 * fa ** 2 / (9 - 6 * fa ** 2))
    return md * (1 + 2 * k), md * (1 - k)


class FABiasTable:
    """Mean fitted FA ``h(FA; b MD, SNR)`` of a fit of the given volumes, and its inverse.

    Inverting ``h`` alone leaves a bias near FA 0: fitted values below ``h(0)`` have no
    preimage and become 0, which pulls the mean of a true FA of 0.2-0.3 down (by 0.03 at SNR
    15). So the correction is applied ``passes`` times: each later pass tabulates the mean of
    the estimate so far over the same simulated fits and inverts that, which moves the
    remaining bias towards FA 0, where no estimate that stays non-negative can avoid one.

    Parameters
    ----------
    bvals, bvecs : array
        The volumes the fit uses (b0s and DWIs), as the fit sees them. Their log-linear fit
        is simulated (OLS; with one b0 and six DWIs it is exact, so OLS and WLS agree).
    config : FABiasConfig
    """

    def __init__(self, bvals: np.ndarray, bvecs: np.ndarray, config: FABiasConfig = FABiasConfig()):
        bvals, bvecs = np.asarray(bvals, np.float64), np.asarray(bvecs, np.float64)
        # the fit's own design (DIPY's: the six elements, then -ln S0); TensorModel refuses one that
        # cannot determine a tensor
        X = TensorModel(gradient_table(bvals, bvecs=bvecs, b0_threshold=B0_THRESHOLD)).design_matrix
        self.config = config
        self.b = float(bvals[bvals > B0_THRESHOLD].mean())   # b of the DWIs: b MD is their attenuation
        self.fa_grid = np.linspace(*config.fa[:2], config.fa[2])
        self.log_b_md = np.log(np.geomspace(*config.b_md[:2], config.b_md[2]))
        self.log_snr = np.log(np.geomspace(*config.snr[:2], config.snr[2]))
        fits = self._simulate(torch.from_numpy(bvals), torch.from_numpy(bvecs), torch.from_numpy(np.asarray(X)))
        self.stages = []                                        # per pass, the mean estimate (F, M, S) to invert
        estimate = fits
        for k in range(config.passes):
            # the fitted FA rises with the true FA; Monte-Carlo noise may break that by a hair
            self.stages.append(np.maximum.accumulate(estimate.mean(-1), axis=0))
            if k + 1 < config.passes:   # the next pass tabulates this pass's estimate of the same fits
                estimate = estimate.copy()
                for m, s in np.ndindex(*estimate.shape[1:3]):
                    values = estimate[:, m, s].ravel()
                    curve = np.broadcast_to(self.stages[-1][:, m, s], (len(values), len(self.fa_grid)))
                    estimate[:, m, s] = _invert(curve, values, self.fa_grid).reshape(estimate.shape[0], -1)

    @property
    def mean_fa(self) -> np.ndarray:
        """``h``: the mean fitted FA over (FA, b MD, SNR)."""
        return self.stages[0]

    def _simulate(self, bvals: torch.Tensor, bvecs: torch.Tensor, X: torch.Tensor) -> np.ndarray:
        """The fitted FA of ``draws`` noisy fits at each point of (FA, b MD, SNR): ``(F, M, S, draws)``.

        The fit is :func:`~.dti.fit_log_linear`'s (its signal floor included), the FA that of
        :func:`~.tensor.decompose`'s clipped eigenvalues. A few FAs at a time, so that memory
        stays near 100 MB.
        """
        gen = torch.Generator().manual_seed(self.config.seed)
        n = self.config.draws
        axes = torch.randn(n, 3, generator=gen, dtype=torch.float64)
        axes = axes / axes.norm(dim=1, keepdim=True)
        cos2 = (bvecs @ axes.T).T ** 2                          # (n, N): cos^2 of each axis with each direction
        md = torch.exp(torch.from_numpy(self.log_b_md))[None, :, None, None] / self.b
        sigma = torch.exp(-torch.from_numpy(self.log_snr))[None, None, :, None, None]
        fitted = []
        for fa in torch.from_numpy(self.fa_grid).split(8):
            l1, l2 = cylinder_eigenvalues(fa[:, None, None, None], md)                 # (f, M, 1, 1)
            signal = torch.exp(-bvals * (l2 + (l1 - l2) * cos2))[:, :, None]          # (f, M, 1, n, N), S0 = 1
            shape = (*signal.shape[:2], sigma.shape[2], *signal.shape[3:])
            real = signal + sigma * torch.randn(shape, generator=gen, dtype=torch.float64)
            imag = sigma * torch.randn(shape, generator=gen, dtype=torch.float64)
            magnitude = torch.sqrt(real ** 2 + imag ** 2)
            lt = fit_log_linear(magnitude.reshape(-1, magnitude.shape[-1]), X, "OLS")[:, :6]
            evals = torch.linalg.eigvalsh(T.from_lower_triangular(lt)).clamp_min(0)
            fitted.append(T.fractional_anisotropy(evals).reshape(magnitude.shape[:-1]))
        return torch.cat(fitted).numpy()

    def curves(self, table: np.ndarray, b_md: np.ndarray, snr: np.ndarray) -> np.ndarray:
        """A ``table`` (F, M, S) at each voxel's ``b MD`` and SNR, ``(V, F)`` (bilinear in the logs, clamped)."""
        def locate(grid, values):
            v = np.clip(np.log(np.maximum(values, 1e-12)), grid[0], grid[-1])
            i = np.clip(np.searchsorted(grid, v) - 1, 0, len(grid) - 2)
            return i, (v - grid[i]) / (grid[i + 1] - grid[i])

        (i, u), (j, w) = locate(self.log_b_md, b_md), locate(self.log_snr, snr)
        h = ((1 - u) * (1 - w) * table[:, i, j] + u * (1 - w) * table[:, i + 1, j]
             + (1 - u) * w * table[:, i, j + 1] + u * w * table[:, i + 1, j + 1]).T
        return np.maximum.accumulate(h, axis=1)

    def invert(self, fa_fit: np.ndarray, b_md: np.ndarray, snr: np.ndarray) -> np.ndarray:
        """The corrected FA of each voxel's fitted FA at its fitted ``b MD`` and b0 SNR (``(V,)`` each).

        The table is indexed by the true ``b MD`` and looked up at the fitted one, which the
        floor lowers at high b and FA (by 12-16% at b = 3000, FA 0.8, SNR 20). Solving for the
        true one too (a fixed point of FA and ``b MD``, the two-moment version) was measured on
        cylinders at b = 3000 and not kept: it moved the remaining bias at FA 0.8-0.9 from
        -0.02 to -0.04 to near 0, but that at FA 0.2-0.6 from within 0.03 to +0.03 to +0.06.
        """
        out = np.asarray(fa_fit, np.float64)
        for table in self.stages:
            out = _invert(self.curves(table, b_md, snr), out, self.fa_grid)
        return out


def _invert(h: np.ndarray, values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Each row's ``h^-1(value)`` on ``grid`` (``h`` (V, F) non-decreasing along F): piecewise linear,
    0 below ``h[:, 0]`` (no true FA gives a value that low on average), the top above ``h[:, -1]``."""
    k = np.clip((h <= values[:, None]).sum(1), 1, h.shape[1] - 1)    # h[k - 1] <= value < h[k]
    rows = np.arange(len(h))
    lo, hi = h[rows, k - 1], h[rows, k]
    t = np.clip((values - lo) / np.maximum(hi - lo, 1e-12), 0, 1)
    return np.where(values < h[:, 0], 0.0, grid[k - 1] + t * (grid[k] - grid[k - 1]))


def repeat_sigma(b0s: np.ndarray, mask: np.ndarray) -> float:
    """The noise standard deviation from repeated b0s ``(X, Y, Z, k)``, k >= 2: the root of the mean,
    over the mask, of each voxel's sample variance (0 where the b0s are identical or the mask empty)."""
    inside = np.asarray(b0s, np.float64)[np.asarray(mask, dtype=bool)]
    return float(np.sqrt(np.mean(inside.var(axis=1, ddof=1)))) if len(inside) else 0.0


def noise_sigma(b0s: np.ndarray, mask: np.ndarray) -> float:
    """The noise standard deviation of a scan's b0s ``(X, Y, Z)`` or ``(X, Y, Z, K)``, in their units.

    With two or more b0s, :func:`repeat_sigma`. With one (or repeats that are identical, a
    copied volume): along each axis of at least three voxels, the second difference
    ``x_i - (x_{i-1} + x_{i+1}) / 2`` of voxels whose two neighbours are in the mask (``sigma
    sqrt(3/2)``), its median absolute value (0.6745 sigma sqrt(3/2)), the smallest of the axes
    (tissue edges inflate the differences across them). Both assume noise that is independent
    from voxel to voxel and close to Gaussian (SNR above about 5); interpolated scans read as
    less noisy than they are.
    """
    b0s = np.asarray(b0s, np.float64)
    mask = np.asarray(mask, dtype=bool)
    if b0s.ndim == 3:
        b0s = b0s[..., None]
    if int(mask.sum()) < MIN_NOISE_VOXELS:
        raise ConfigError(f"the mask holds {int(mask.sum())} voxels; the noise needs at least {MIN_NOISE_VOXELS}")
    if b0s.shape[3] >= 2:
        sigma = repeat_sigma(b0s, mask)
        if sigma > 0:
            return sigma
    b0 = b0s[..., 0]
    sigmas = []
    for axis in range(3):
        n = b0.shape[axis]
        if n < 3:
            continue
        centre = [slice(None)] * 3
        centre[axis] = slice(1, n - 1)
        before, after = list(centre), list(centre)
        before[axis], after[axis] = slice(0, n - 2), slice(2, n)
        inner = mask[tuple(centre)] & mask[tuple(before)] & mask[tuple(after)]
        second = np.abs(b0[tuple(centre)] - (b0[tuple(before)] + b0[tuple(after)]) / 2)[inner]
        if second.size >= MIN_NOISE_VOXELS:
            sigmas.append(np.median(second) / (0.6745 * np.sqrt(1.5)))
    if not sigmas or not min(sigmas) > 0:
        raise ConfigError("the b0 shows no noise to measure (no axis with enough masked voxels between two "
                          "others, or a noise-free volume)")
    return float(min(sigmas))


def with_fa(evals: np.ndarray, fa: np.ndarray, min_fa: float = MIN_FA) -> np.ndarray:
    """Eigenvalues ``(..., 3)`` with their mean and shape kept and their spread scaled to FA ``fa``.

    ``l = MD + s (l - MD)`` has ``FA^2 = 1.5 s^2 |dev|^2 / (3 MD^2 + s^2 |dev|^2)``; ``s`` is
    capped where the smallest eigenvalue would fall below 0 (such a voxel keeps a lower FA).
    FA under ``min_fa`` is raised to it: a tensor of FA 0 has no principal direction, and the
    eigenvectors are worth keeping (a corrected FA of 0 says the anisotropy is within the
    noise, not that the direction is unknown). An isotropic tensor stays isotropic.
    """
    evals = np.asarray(evals, np.float64)
    md = evals.mean(-1, keepdims=True)
    dev = evals - md
    d2 = (dev ** 2).sum(-1)
    f2 = np.clip(np.asarray(fa, np.float64), min_fa, 0.999) ** 2
    s = np.sqrt(np.where(d2 > 0, 3 * f2 * md[..., 0] ** 2 / np.maximum((1.5 - f2) * d2, 1e-300), 0.0))
    lowest = dev.min(-1)
    s = np.where(lowest < 0, np.minimum(s, md[..., 0] / np.maximum(-lowest, 1e-300)), s)
    return md + np.maximum(s, 0)[..., None] * dev


def check_six_dwis(bvals: np.ndarray) -> None:
    """Refuse volumes other than one b0 and six DWIs (the table simulates exactly that fit)."""
    bvals = np.asarray(bvals, np.float64)
    n_b0 = int((bvals <= B0_THRESHOLD).sum())
    if len(bvals) != 7 or n_b0 != 1:
        raise ConfigError(f"the FA bias correction needs one b0 and six DWIs, got {len(bvals)} volumes with {n_b0} b0s")


def fa_corrected(lsq: TensorFit, bvals: np.ndarray, bvecs: np.ndarray, sigma: float) -> tuple[np.ndarray, dict]:
    """The noise-corrected FA ``(X, Y, Z)`` of ``lsq``, a least-squares fit of one b0 and six DWIs, and a record.

    ``bvals``, ``bvecs``: the seven volumes ``lsq`` fitted. Each voxel's FA, ``b MD`` and fitted
    S0 over ``sigma`` (the noise's standard deviation, e.g. :func:`noise_sigma`; S0 is the b0,
    as seven volumes determine the fit exactly) are looked up in their :class:`FABiasTable`.
    """
    check_six_dwis(bvals)
    if not sigma > 0:
        raise ConfigError(f"the noise standard deviation must be positive, got {sigma}")
    table = _table(tuple(np.asarray(bvals, np.float64).ravel()), tuple(np.asarray(bvecs, np.float64).ravel()))
    mask = lsq.mask
    evals = torch.from_numpy(np.clip(lsq.evals[mask], 0, None).astype(np.float64))
    out = np.zeros(mask.shape)
    out[mask] = table.invert(T.fractional_anisotropy(evals).numpy(), table.b * T.mean_diffusivity(evals).numpy(),
                             lsq.s0[mask] / float(sigma))
    return out, {"method": "Monte-Carlo inverse of the mean FA of the six-DWI least-squares fit "
                           "(difftract.reconst.fa_bias)",
                 "noise_sigma": float(sigma), "draws": table.config.draws, "passes": table.config.passes,
                 "seed": table.config.seed}


@lru_cache(maxsize=4)
def _table(bvals: tuple[float, ...], bvecs: tuple[float, ...]) -> FABiasTable:
    """The default table of a scheme, built once per process (it is seeded).

    A cohort's subjects on one scheme, or a scan's repeated fits, share it rather than
    simulate it again (about 3 s each).
    """
    return FABiasTable(np.array(bvals), np.array(bvecs).reshape(-1, 3))


def with_corrected_fa(fit: TensorFit, fa: np.ndarray, record: dict) -> TensorFit:
    """``fit`` with each voxel's FA set to ``fa`` (:func:`with_fa`: eigenvectors, MD and shape kept) and
    ``record`` in its params as ``fa_correction``."""
    evals = np.array(fit.evals, dtype=np.float64)
    evals[fit.mask] = with_fa(evals[fit.mask], fa[fit.mask])
    return replace(fit, evals=evals, params={**fit.params, "fa_correction": record})
