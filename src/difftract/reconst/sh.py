"""Spherical-harmonic (SH) fit of the diffusion signal, batched in torch.

The basis is DIPY's descoteaux07 (real, symmetric: even orders only), built by DIPY so
the coefficients mean exactly what they mean there; ``legacy`` picks DIPY's historical
variant (``|m|`` for negative phase factors, DIPY's and scilpy's default) or the basis as
published (``legacy=False``, the one DIPY recommends). The fit is the Laplace-Beltrami
regularised least squares of :func:`dipy.reconst.shm.sf_to_sh`::

    c = (B^T B + lambda L^2)^-1 B^T s,   L = diag(-l (l + 1))

applied to the b0-normalised signal of one shell (DESIGN: mean b0, DW clipped to <= b0,
divided by b0, zero where b0 is 0). ``lambda`` defaults to 0.006, DIPY's default for its
SH models. lmax 6 gives 28 coefficients.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from dipy.core.gradients import GradientTable, unique_bvals_tolerance
from dipy.core.sphere import Sphere
from dipy.reconst.shm import real_sh_descoteaux, smooth_pinv

from ..device import resolve_device, resolve_dtype
from ..errors import ConfigError
from ..io.gradients import B0_THRESHOLD
from .voxels import DEFAULT_CHUNK, map_chunks, masked_rows, unmask

log = logging.getLogger("difftract")

DEFAULT_SMOOTH = 0.006  # DIPY's Laplace-Beltrami lambda for its SH models (QballBaseModel)
SHELL_TOLERANCE = 20.0  # b-values within this of each other form one shell (DIPY's default)


def n_coeffs(lmax: int) -> int:
    """Number of coefficients of the symmetric basis up to even order ``lmax``."""
    return (lmax + 1) * (lmax + 2) // 2


def lmax_from_ncoeffs(n: int) -> int:
    """Inverse of :func:`n_coeffs`; raises ValueError for a count that fits no order."""
    lmax = int(round((np.sqrt(8 * n + 1) - 3) / 2))
    if lmax < 0 or lmax % 2 or n_coeffs(lmax) != n:
        raise ValueError(f"{n} is not the coefficient count of a symmetric SH basis (1, 6, 15, 28, 45, ...)")
    return lmax


def check_lmax(lmax: int) -> int:
    """lmax must be an even integer from 0 to 14."""
    if not (isinstance(lmax, (int, np.integer)) and 0 <= lmax <= 14 and lmax % 2 == 0):
        raise ConfigError(f"lmax must be an even integer between 0 and 14, got {lmax!r}")
    return int(lmax)


def sh_basis(directions: np.ndarray, lmax: int, legacy: bool) -> tuple[np.ndarray, np.ndarray]:
    """The descoteaux07 basis sampled at unit ``directions``.

    Returns
    -------
    B : ndarray, (n, n_coeffs(lmax)) float64
        ``B[i, j]`` is harmonic ``j`` at direction ``i``.
    l_values : ndarray of int, (n_coeffs(lmax),)
        The order of each harmonic.
    """
    sphere = Sphere(xyz=np.asarray(directions, dtype=np.float64))
    with warnings.catch_warnings():  # the legacy choice is explicit here, and recorded by callers
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        B, _, l_values = real_sh_descoteaux(check_lmax(lmax), sphere.theta, sphere.phi, legacy=legacy)
    return B, l_values


def sh_fit_matrix(directions: np.ndarray, lmax: int, legacy: bool, smooth: float = DEFAULT_SMOOTH) -> np.ndarray:
    """The ``(n_coeffs, n)`` matrix taking amplitudes at ``directions`` to SH coefficients.

    Identical to the inverse :func:`dipy.reconst.shm.sf_to_sh` applies.
    """
    if not (np.isfinite(smooth) and smooth >= 0):
        raise ConfigError(f"the regularisation lambda (smooth) must be >= 0, got {smooth}")
    B, l_values = sh_basis(directions, lmax, legacy)
    return smooth_pinv(B, np.sqrt(smooth) * (-l_values * (l_values + 1.0)))


def gfa(coeffs: np.ndarray) -> np.ndarray:
    """Generalised FA of SH functions ``(..., n_coeffs)``: sqrt(1 - c0^2 / sum c^2), 0 where all are 0.

    The basis is orthonormal, so this is the normalised standard deviation of the
    function over the sphere (DIPY's GFA from SH coefficients).
    """
    power = np.sum(np.asarray(coeffs, dtype=np.float64) ** 2, axis=-1)
    ratio = np.divide(coeffs[..., 0] ** 2, power, out=np.ones_like(power), where=power > 0)
    return np.sqrt(np.clip(1.0 - ratio, 0.0, 1.0))


def shells(bvals: np.ndarray, b0_threshold: float = B0_THRESHOLD) -> np.ndarray:
    """The distinct non-zero b-values, ascending, grouped within ``SHELL_TOLERANCE`` (DIPY's rule)."""
    bvals = np.asarray(bvals, dtype=np.float64)
    dw = bvals[bvals > b0_threshold]
    return unique_bvals_tolerance(dw, tol=SHELL_TOLERANCE) if dw.size else np.zeros(0)


def select_shell(gtab: GradientTable, shell: float | None = None,
                 b0_threshold: float = B0_THRESHOLD) -> np.ndarray:
    """Indices of the diffusion-weighted volumes of one shell.

    With ``shell=None`` a single-shell scan gives its shell and a multi-shell scan its
    highest shell (as MRtrix's response estimation does), with a note saying so.
    """
    bvals = np.asarray(gtab.bvals, dtype=np.float64)
    dw = bvals > b0_threshold
    found = shells(bvals, b0_threshold)
    if not len(found):
        raise ConfigError("the scan has no diffusion-weighted volume to fit SH to")
    if shell is None:
        shell = float(found[-1])
        if len(found) > 1:
            log.info("multi-shell scan (b = %s); fitting SH to the highest shell, b = %g (choose with shell=)",
                     ", ".join(f"{b:g}" for b in found), shell)
    picked = np.flatnonzero(dw & (np.abs(bvals - shell) <= SHELL_TOLERANCE))
    if picked.size == 0:
        raise ConfigError(f"no volumes with b = {shell:g} (+/- {SHELL_TOLERANCE:g}); the shells are "
                          + ", ".join(f"{b:g}" for b in found))
    return picked


def normalize_signal(signal: torch.Tensor, b0_index: torch.Tensor, dw_index: torch.Tensor) -> torch.Tensor:
    """b0-normalised DW signal ``(V, n_dw)``: mean b0, DW clipped to <= b0, divided by b0, 0 where b0 <= 0."""
    b0 = signal[:, b0_index].mean(dim=1, keepdim=True)
    dw = torch.minimum(signal[:, dw_index], b0)
    positive = b0 > 0
    return torch.where(positive, dw / torch.where(positive, b0, torch.ones_like(b0)), torch.zeros_like(dw))


@dataclass
class SHFit:
    """SH coefficients on the grid, with what is needed to read them back."""

    coeffs: np.ndarray          # (X, Y, Z, n_coeffs)
    mask: np.ndarray            # (X, Y, Z) bool
    lmax: int
    legacy: bool
    params: dict = field(default_factory=dict)

    def odf(self, directions: np.ndarray) -> np.ndarray:
        """Amplitudes of the fitted function at unit ``directions``, shape ``(X, Y, Z, n)``."""
        B, _ = sh_basis(directions, self.lmax, self.legacy)
        return self.coeffs @ B.T


class SHModel:
    """Regularised SH fit of the b0-normalised signal of one shell (DIPY's model/fit pattern).

    Parameters
    ----------
    gtab : GradientTable
        b-values and unit directions in the data-array frame.
    lmax : int
        Maximal even order (2 to 8 in common use; 6 gives 28 coefficients).
    legacy : bool
        DIPY's legacy descoteaux07 basis (True) or the published one (False).
    smooth : float
        Laplace-Beltrami regularisation lambda (DIPY's default 0.006; 0 for plain LS).
    shell : float or None
        b-value of the shell to fit; None: the only shell, or the highest.
    """

    def __init__(self, gtab: GradientTable, lmax: int = 6, legacy: bool = False, smooth: float = DEFAULT_SMOOTH,
                 shell: float | None = None, b0_threshold: float = B0_THRESHOLD):
        self.gtab, self.lmax, self.legacy, self.smooth = gtab, check_lmax(lmax), bool(legacy), float(smooth)
        bvals = np.asarray(gtab.bvals)
        self.b0_index = np.flatnonzero(bvals <= b0_threshold)
        if self.b0_index.size == 0:
            raise ConfigError(f"the scan has no b0 volume (b <= {b0_threshold:g}) to normalise by")
        self.dw_index = select_shell(gtab, shell, b0_threshold)
        self.shell = float(np.round(bvals[self.dw_index].mean()))
        n_dw, n_c = len(self.dw_index), n_coeffs(self.lmax)
        if n_dw < n_c and self.smooth == 0:
            raise ConfigError(f"lmax {self.lmax} needs {n_c} directions for an unregularised fit; the b = "
                              f"{self.shell:g} shell has {n_dw} (lower lmax or use smooth > 0)")
        if n_dw < n_c:
            log.info("lmax %d has %d coefficients for %d directions: the fit leans on the regularisation",
                     self.lmax, n_c, n_dw)
        self.directions = np.asarray(gtab.bvecs)[self.dw_index]
        self.fit_matrix = sh_fit_matrix(self.directions, self.lmax, self.legacy, self.smooth)

    @property
    def params(self) -> dict:
        return {"basis": "descoteaux07", "legacy": self.legacy, "lmax": self.lmax, "smooth": self.smooth,
                "shell": self.shell, "n_directions": int(len(self.dw_index)),
                "normalisation": "mean b0; DW clipped to <= b0; divided by b0; 0 where b0 <= 0"}

    def kernel(self, device: torch.device, dtype: torch.dtype):
        """The per-chunk function ``(V, N) signal -> {"coeffs": (V, n_coeffs)}``."""
        fit_t = torch.as_tensor(self.fit_matrix.T, device=device, dtype=dtype)
        b0_index = torch.as_tensor(self.b0_index, device=device)
        dw_index = torch.as_tensor(self.dw_index, device=device)

        def kernel(signal: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"coeffs": normalize_signal(signal, b0_index, dw_index) @ fit_t}

        return kernel

    def fit(self, data: np.ndarray, mask: np.ndarray | None = None, *, device: str | torch.device = "cpu",
            dtype: str | torch.dtype = "float64", chunk_size: int | None = None,
            progress: bool | None = None) -> SHFit:
        """Fit every voxel of ``mask`` (all voxels when None); others get zeros."""
        if data.shape[-1] != len(self.gtab.bvals):
            raise ConfigError(f"data has {data.shape[-1]} volumes but the gradient table {len(self.gtab.bvals)}")
        rows, mask = masked_rows(data, mask)
        device, dtype = resolve_device(device), resolve_dtype(dtype)
        out = map_chunks(self.kernel(device, dtype), rows, device=device, dtype=dtype,
                         chunk_size=chunk_size or DEFAULT_CHUNK, progress=progress, desc="SH fit")
        return SHFit(unmask(out["coeffs"], mask), mask, self.lmax, self.legacy, self.params)
