"""Constrained spherical deconvolution (CSD), batched over voxels in torch.

The fODF coefficients are those of DIPY's ``ConstrainedSphericalDeconvModel(gtab,
response, sh_order_max=lmax).fit(data).shm_coeff`` (Tournier 2007), computed for a whole
chunk of voxels at once instead of DIPY's per-voxel loop. Per voxel, with the raw DW
signal ``s`` (not b0-normalised: the response carries ``S0``)::

    X = B_dwi diag(R)     (signal predicted from fODF coefficients; R: response's RH)
    P = X^T X  (+ 1e-5 I when LAPACK finds X^T X singular, e.g. 45 coefficients, 32 directions)
    f0 = P^-1 X^T s
    threshold = tau * B_reg[0, 0] * f0[0]          (tau times the mean fODF amplitude)
    H = rows of B_reg where the fODF (first orders <= 4 of f0; all orders if that gives
        none) is below the threshold; no such row: f0 is the answer
    repeat up to `convergence` times:
        f = (P + H^T H)^-1 X^T s                   (Cholesky)
        H = rows of B_reg where B_reg f < threshold; stop when the set is unchanged

``B_reg`` is the basis on the regularisation sphere (DIPY's ``small_sphere``, the 181
vertices of a symmetric362 hemisphere) times ``lambda * n_coeffs * r_rh[0] /
sqrt(181 * 362)``. Every voxel carries its own constraint set; the iteration runs for a
whole chunk of voxels at once (:mod:`difftract.reconst.active_set`: batched Cholesky
factorisations, and Woodbury solves while a voxel's set changes in few rows). A voxel that
does not converge keeps its last iterate (as in DIPY, which warns); they are counted in
``params``.

The matrices are built in the basis asked for: the published and the legacy
descoteaux07 bases differ by the sign of some ``m < 0`` harmonics, which maps the whole
problem onto itself, so the result equals DIPY's coefficients converted with
``convert_sh_from_legacy``. On a multi-shell scan one shell is deconvolved (default the
highest), i.e. DIPY's model on the gradient table of the b0 volumes and that shell.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch
from dipy.core.gradients import GradientTable
from dipy.core.sphere import Sphere

from ..device import resolve_device, resolve_dtype
from ..errors import ConfigError
from ..io.gradients import B0_THRESHOLD
from ..memory import chunk_for
from .active_set import MU, cholesky_solve, iterate
from .response import check_response, response_from_region, response_region, single_shell
from .sh import SHFit, check_lmax, check_shell_directions, n_coeffs, pick_shell, sh_basis
from .voxels import MaskedSignal, map_chunks, masked_rows, take_volumes, unmask

log = logging.getLogger("difftract")

LOW_ORDER = 15            # coefficients of orders <= 4: the smooth first estimate
CHUNK_CPU = 1_024         # voxels per chunk (per worker): measured best of 256-2,048
CHUNK_CUDA = 20_000       # Q then takes 20,000 * 45^2 doubles (160 MB) on the GPU
FLOAT32_MAX_COND = 1e7    # beyond this condition number of P, float32 solves lose the answer


def default_reg_sphere() -> Sphere:
    """DIPY's ``small_sphere``: the 181 vertices of the symmetric362 hemisphere."""
    from dipy.data import small_sphere
    return small_sphere


@dataclass
class Deconvolution:
    """The small matrices of one CSD problem, in one SH basis."""

    X: np.ndarray        # (n_dw, C): fODF coefficients -> DW signal
    P: np.ndarray        # (C, C): X^T X, plus MU * I when that is not positive definite
    B_reg: np.ndarray    # (S, C): lambda-scaled basis on the regularisation sphere
    P_regularised: bool


def response_rh(directions: np.ndarray, bvals: np.ndarray, evals: np.ndarray, S0: float,
                lmax: int, legacy: bool) -> np.ndarray:
    """Rotational-harmonic coefficients ``(lmax/2 + 1,)`` of the response on this shell.

    The response signal is a tensor with eigenvalues ``evals`` along z, sampled at the
    shell's directions, fit by (minimum-norm) least squares in the SH basis; its m = 0
    coefficients divided by ``Y_l^0`` at the pole are the RH coefficients.
    """
    D = np.diag([evals[2], evals[1], evals[0]])     # DIPY's response frame: first eigenvector along z
    signal = S0 * np.exp(-bvals * np.einsum("ni,ij,nj->n", directions, D, directions))
    B, l_values = sh_basis(directions, lmax, legacy)
    r_sh = np.linalg.lstsq(B, signal, rcond=-1)[0]     # DIPY's cut-off: machine precision
    l_even = np.arange(0, lmax + 1, 2)
    return r_sh[_zonal_index(lmax)] / np.sqrt((2 * l_even + 1) / (4 * np.pi))


def _zonal_index(lmax: int) -> np.ndarray:
    """Positions of the m = 0 harmonics in the descoteaux07 ordering (l = 0, 2, ..., lmax)."""
    return np.array([n_coeffs(l) - l - 1 for l in range(0, lmax + 1, 2)])


def deconvolution_matrices(directions: np.ndarray, bvals: np.ndarray, response: tuple[np.ndarray, float],
                           lmax: int, legacy: bool, reg_sphere: Sphere, lambda_: float) -> Deconvolution:
    """Build ``X``, ``P`` and ``B_reg`` exactly as DIPY's CSD model does (see the module notes)."""
    evals, S0 = response
    B_dwi, l_values = sh_basis(directions, lmax, legacy)
    r_rh = response_rh(directions, bvals, evals, S0, lmax, legacy)
    R = r_rh[l_values // 2]                           # the diagonal of DIPY's forward_sdeconv_mat
    X = B_dwi * R
    B_reg, _ = sh_basis(reg_sphere.vertices, lmax, legacy)
    n_reg = B_reg.shape[0]
    B_reg = B_reg * (lambda_ * len(R) * r_rh[0] / (np.sqrt(n_reg) * np.sqrt(362.0)))
    P = X.T @ X
    _, info = scipy.linalg.lapack.dpotrf(P, lower=False, clean=False)
    if info > 0:                                      # same test, same LAPACK as DIPY: same decision
        P = P + MU * np.eye(len(P))
    return Deconvolution(X, P, B_reg, bool(info > 0))


def deconvolve(dw: torch.Tensor, X: torch.Tensor, P: torch.Tensor, B_reg: torch.Tensor, tau: float,
               convergence: int) -> dict[str, torch.Tensor]:
    """CSD of the DW signals ``dw (V, n_dw)``, all voxels at once.

    Returns ``coeffs (V, C)``, ``iterations (V,)`` (0: no constraint was needed) and
    ``converged (V,)``; ``cholesky_failed (V,)`` marks voxels where a factorisation
    failed even after adding ``MU * I`` (they keep their last iterate). The iteration
    itself is :func:`difftract.reconst.active_set.iterate`.
    """
    z = dw @ X                                                     # X^T s, (V, C)
    f = cholesky_solve(z.unsqueeze(-1), torch.linalg.cholesky(P)).squeeze(-1)
    threshold = (tau * B_reg[0, 0]) * f[:, :1]                     # (V, 1)
    small = f[:, :LOW_ORDER] @ B_reg[:, :LOW_ORDER].T < threshold
    none = ~small.any(dim=1)
    if none.any():
        small[none] = f[none] @ B_reg.T < threshold[none]
    return iterate(z, P, B_reg, f, threshold, small, convergence)


class CsdFit(SHFit):
    """fODF SH coefficients (an :class:`SHFit`, so trackers read it like any SH field)."""


class CsdModel:
    """Constrained spherical deconvolution of one shell (DIPY's model/fit pattern).

    Parameters
    ----------
    gtab : GradientTable
        b-values and unit directions in the data-array frame.
    response : None, "auto" or (evals (3,), S0)
        Single-fibre response; None or "auto" estimates it at :meth:`fit` from the
        anisotropic voxels of the mask (:func:`difftract.reconst.response.response_region`).
    lmax : int
        Maximal even SH order of the fODF (DIPY's ``sh_order_max``, default 8).
    legacy : bool
        DIPY's legacy descoteaux07 basis (True) or the published one (False).
    shell : float or None
        b-value of the shell to deconvolve; None: the only shell, or the highest.
    reg_sphere : Sphere or None
        Directions of the non-negativity constraint; None: DIPY's ``small_sphere``.
    lambda_, tau, convergence : float, float, int
        Constraint weight, amplitude threshold (fraction of the mean fODF amplitude) and
        maximal number of iterations, as in DIPY.
    """

    def __init__(self, gtab: GradientTable, response=None, lmax: int = 8, legacy: bool = False,
                 shell: float | None = None, reg_sphere: Sphere | None = None, lambda_: float = 1.0,
                 tau: float = 0.1, convergence: int = 50, b0_threshold: float = B0_THRESHOLD):
        self.gtab, self.lmax, self.legacy = gtab, check_lmax(lmax), bool(legacy)
        if not (np.isfinite(lambda_) and lambda_ >= 0):
            raise ConfigError(f"lambda_ must be a finite number >= 0, got {lambda_}")
        if not np.isfinite(tau):
            raise ConfigError(f"tau must be finite, got {tau}")
        if not (isinstance(convergence, (int, np.integer)) and convergence >= 0):
            raise ConfigError(f"convergence (maximal iterations) must be an integer >= 0, got {convergence!r}")
        self.lambda_, self.tau, self.convergence = float(lambda_), float(tau), int(convergence)
        self.b0_threshold = b0_threshold
        picked = pick_shell(gtab, shell, b0_threshold)
        n_distinct = check_shell_directions(gtab, picked, self.lmax, "CSD", b0_threshold, shell_given=shell is not None)
        self.volumes, self.shell_gtab = single_shell(gtab, shell, b0_threshold)
        dw = ~np.asarray(self.shell_gtab.b0s_mask)
        self.dw_index = self.volumes[dw]                 # into the caller's volumes
        self.directions = np.asarray(self.shell_gtab.bvecs)[dw]
        self.bvals = np.asarray(self.shell_gtab.bvals, dtype=np.float64)[dw]
        self.shell = float(np.round(self.bvals.mean()))
        self.reg_sphere = default_reg_sphere() if reg_sphere is None else reg_sphere
        if len(self.dw_index) < n_coeffs(self.lmax):
            log.info("lmax %d has %d coefficients for %d directions: CSD leans on its non-negativity "
                     "constraint (super-resolution)", self.lmax, n_coeffs(self.lmax), len(self.dw_index))
        if response is None or (isinstance(response, str) and response == "auto"):
            self.response = None
        elif isinstance(response, str):
            raise ConfigError(f"response must be None, 'auto' or (evals, S0), got {response!r}")
        else:
            self.response = check_response(response)
        if self.response is None:
            self._check_response_scheme(picked, n_distinct)

    def _check_response_scheme(self, picked, n_distinct: int) -> None:
        """The response is a tensor fitted on the b0s and this shell: refuse early if it cannot be."""
        from .dti import TensorModel

        try:
            TensorModel(self.shell_gtab)
        except ConfigError:
            raise ConfigError(f"CSD estimates its response from a tensor fit on the b0 volumes and the "
                              f"{picked.describe()} shell, but its {n_distinct} distinct directions cannot determine "
                              "a tensor (they need 6 non-coplanar ones); choose another shell (--shell) or give the "
                              "response (--response L1,L2,L3,S0)") from None

    def matrices(self, response: tuple[np.ndarray, float]) -> Deconvolution:
        """The deconvolution matrices for a given response."""
        return deconvolution_matrices(self.directions, self.bvals, response, self.lmax, self.legacy,
                                      self.reg_sphere, self.lambda_)

    def fit_params(self, response: tuple[np.ndarray, float], response_info: dict) -> dict:
        """What a fit records about the model and its response."""
        evals, S0 = response
        return {"model": "csd", "basis": "descoteaux07", "legacy": self.legacy, "lmax": self.lmax,
                "shell": self.shell, "n_directions": int(len(self.dw_index)),
                "response": {"evals": [float(e) for e in evals], "S0": float(S0), **response_info},
                "tau": self.tau, "lambda": self.lambda_, "convergence": self.convergence,
                "reg_sphere_vertices": int(len(self.reg_sphere.vertices)),
                "signal": "raw DW signal of one shell (the response carries S0)"}

    def estimate_response(self, data: np.ndarray | MaskedSignal,
                          mask: np.ndarray | None) -> tuple[tuple[np.ndarray, float], dict]:
        """Response from the anisotropic voxels of ``mask`` on this model's shell, and where it came from."""
        everything = np.array_equal(self.volumes, np.arange(data.shape[-1]))
        sub = data if everything else take_volumes(data, self.volumes)   # single-shell scans: no copy
        region, threshold = response_region(self.shell_gtab, sub, mask)
        response = response_from_region(self.shell_gtab, sub, region)
        log.info("CSD response: evals %s, S0 %.4g from %d voxels with FA > %.2g",
                 np.array2string(response[0], precision=6), response[1], int(region.sum()), threshold)
        return response, {"source": "auto", "fa_threshold": threshold, "n_voxels": int(region.sum())}

    def kernel(self, matrices: Deconvolution, device: torch.device, dtype: torch.dtype):
        """The per-chunk function ``(V, N) signal -> dict of (V, ...) tensors``.

        The linear algebra runs in ``dtype`` unless that is float32 and ``P`` is too
        ill-conditioned for it (e.g. more coefficients than directions): then in float64.
        """
        solve_dtype = solve_dtype_for(matrices.P, dtype)

        def t(a):
            return torch.as_tensor(a, device=device, dtype=solve_dtype)

        X, P, B_reg = t(matrices.X), t(matrices.P), t(matrices.B_reg)
        dw_index = torch.as_tensor(self.dw_index, device=device)

        def kernel(signal: torch.Tensor) -> dict[str, torch.Tensor]:
            out = deconvolve(signal[:, dw_index].to(solve_dtype), X, P, B_reg, self.tau, self.convergence)
            out["coeffs"] = out["coeffs"].to(dtype)
            return out

        return kernel

    def fit(self, data: np.ndarray | MaskedSignal, mask: np.ndarray | None = None, *,
            device: str | torch.device = "cpu", dtype: str | torch.dtype = "float64", chunk_size: int | None = None,
            progress: bool | None = None) -> CsdFit:
        """Deconvolve every voxel of ``mask`` (all voxels when None); others get zeros.

        ``chunk_size`` None: 1,024 voxels on CPU (per worker thread), 20,000 on CUDA, fewer when free memory is
        short (a voxel's working set is its normal matrices, ``3 C^2`` doubles, and its
        constraint tests on the regularisation sphere).
        """
        if data.ndim != 4 or data.shape[-1] != len(self.gtab.bvals):
            raise ConfigError(f"data must be (X, Y, Z, {len(self.gtab.bvals)}) to match the gradient table, "
                              f"got shape {data.shape}")
        if self.response is None:
            response, info = self.estimate_response(data, mask)
        else:
            response, info = self.response, {"source": "given"}
        matrices = self.matrices(response)
        rows, mask = masked_rows(data, mask)
        device, dtype = resolve_device(device), resolve_dtype(dtype)
        if chunk_size is None:
            per_voxel = 8 * (3 * n_coeffs(self.lmax) ** 2 + 2 * len(self.reg_sphere.vertices) + data.shape[-1])
            chunk_size = chunk_for(per_voxel, device, CHUNK_CUDA if device.type == "cuda" else CHUNK_CPU, minimum=64)
        out = map_chunks(self.kernel(matrices, device, dtype), rows, device=device, dtype=dtype,
                         chunk_size=chunk_size, progress=progress, desc="CSD fit", progress_min=5_000)
        params = self.fit_params(response, info)
        params["P_regularised"] = matrices.P_regularised
        params["solve_dtype"] = str(solve_dtype_for(matrices.P, dtype)).removeprefix("torch.")
        params["iterations"] = iteration_stats(out)
        if params["iterations"]["not_converged"]:
            log.warning("CSD: %d of %d voxels did not converge in %d iterations (they keep their last "
                        "estimate)", params["iterations"]["not_converged"], len(rows), self.convergence)
        return CsdFit(unmask(out["coeffs"], mask), mask, self.lmax, self.legacy, params)


def solve_dtype_for(P: np.ndarray, dtype: torch.dtype) -> torch.dtype:
    """``dtype``, or float64 when ``dtype`` is float32 and ``P`` is too ill-conditioned for it."""
    if dtype == torch.float32 and np.linalg.cond(P) > FLOAT32_MAX_COND:
        return torch.float64
    return dtype


def iteration_stats(out: dict[str, np.ndarray]) -> dict:
    """Summary of the per-voxel iteration counts for ``params``."""
    it = out["iterations"]
    return {"mean": float(it.mean()) if it.size else 0.0, "max": int(it.max()) if it.size else 0,
            "unconstrained": int((it == 0).sum()), "not_converged": int((~out["converged"]).sum()),
            "cholesky_failed": int(out["cholesky_failed"].sum())}
