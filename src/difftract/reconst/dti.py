"""Diffusion tensor imaging: OLS and WLS fits batched in torch, DIPY's numbers.

The model is the log-linear one, ``log S = X beta`` with DIPY's design matrix ``X``
(columns ``-b gx^2, -2b gx gy, -b gy^2, -2b gx gz, -2b gy gz, -b gz^2, -1``), so ``beta``
holds the six tensor elements and ``-log S0``. As in :class:`dipy.reconst.dti.TensorModel`:

- the signal is first raised to ``min_signal`` (1e-4) so that the log exists;
- OLS is ``beta = pinv(X) log S``;
- WLS (Chung et al. 2006) weighs each measurement by the signal the OLS fit predicts,
  ``w = exp(X beta_OLS)``, and solves ``min || w * (X beta - log S) ||``;
- eigenvalues below ``1e-6 / max|X|`` (negative ones included) are raised to it, and the
  tensor reported is the one rebuilt from the clipped eigenvalues.

Where DIPY takes a pseudo-inverse of a different ``(N, 7)`` matrix per voxel, here WLS
forms the 7x7 normal equations of every voxel with one matrix product over all voxels
(columns equilibrated first, so float64 matches DIPY's SVD to ~1e-10) and solves them
batched. Voxels are fitted in chunks of bounded size, on CPU or GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch
from dipy.core.gradients import GradientTable

from ..device import resolve_device, resolve_dtype
from ..errors import ConfigError
from . import tensor as T
from ..memory import chunk_for
from .voxels import MaskedSignal, default_chunk, map_chunks, masked_rows, unmask

MIN_SIGNAL = 1e-4        # DIPY's MIN_POSITIVE_SIGNAL
EIGENVALUE_TOL = 1e-6    # DIPY's tol: min_diffusivity = tol / max|X|
FIT_METHODS = ("WLS", "OLS")


def design_matrix(gtab: GradientTable) -> np.ndarray:
    """DIPY's ``(N, 7)`` DTI design matrix (negated b-matrix elements and -1)."""
    b, g = np.asarray(gtab.bvals, dtype=np.float64), np.asarray(gtab.bvecs, dtype=np.float64)
    gx, gy, gz = g.T
    X = np.stack([b * gx * gx, 2 * b * gx * gy, b * gy * gy, 2 * b * gx * gz, 2 * b * gy * gz, b * gz * gz,
                  np.ones_like(b)], axis=1)
    return -X


_UPPER = np.triu_indices(7)                 # the 28 distinct products of design-matrix columns
_SYMMETRIC = np.zeros((7, 7), dtype=np.int64)
_SYMMETRIC[_UPPER] = _SYMMETRIC.T[_UPPER] = np.arange(len(_UPPER[0]))
_SYMMETRIC = torch.as_tensor(_SYMMETRIC.ravel())  # (49,): which product fills each matrix entry


def fit_log_linear(signal: torch.Tensor, X: torch.Tensor, method: str = "WLS",
                   min_signal: float = MIN_SIGNAL) -> torch.Tensor:
    """Solve the log-linear tensor model for a ``(V, N)`` signal; returns ``beta`` ``(V, 7)``.

    Differentiable in ``signal``. The logs are taken in the signal's dtype; the least
    squares run in float64 whatever that dtype (cheap at 7 unknowns, and it keeps the
    float32 path's error at the level of its inputs). ``beta`` comes back in ``X.dtype``.
    """
    acc = torch.float64
    log_s = torch.log(signal.clamp(min=min_signal)).to(acc)
    Xa = X.to(acc)
    scale = 1.0 / torch.linalg.vector_norm(Xa, dim=0)          # equilibrate the columns
    Xs = Xa * scale
    beta_ols = log_s @ torch.linalg.pinv(Xs).T
    if method == "OLS":
        return (beta_ols * scale).to(X.dtype)
    log_pred = beta_ols @ Xs.T                                 # log of the OLS-predicted signal
    # squared predicted signal, divided by its largest value per voxel (the scale of the weights is free,
    # and this keeps exp() finite whatever the signal's magnitude)
    w2 = torch.exp(2.0 * (log_pred - log_pred.amax(dim=1, keepdim=True)))
    n = X.shape[1]
    upper = w2 @ (Xs[:, _UPPER[0]] * Xs[:, _UPPER[1]])         # (V, 28): upper triangle of X^T W X
    normal = upper[:, _SYMMETRIC.to(upper.device)].view(-1, n, n)
    rhs = (w2 * log_s) @ Xs
    gamma, info = torch.linalg.solve_ex(normal, rhs)
    bad = info != 0
    if bool(bad.any()):  # singular weights (should not happen for w > 0): fall back on least squares
        sw = torch.sqrt(w2[bad])
        gamma[bad] = torch.linalg.lstsq(Xs * sw[..., None], (sw * log_s[bad])[..., None]).solution[..., 0]
    return (gamma * scale).to(X.dtype)


@dataclass
class TensorFit:
    """A fitted tensor field (DIPY's TensorFit, as arrays on the grid).

    Attributes
    ----------
    evals : ndarray, (X, Y, Z, 3)
        Eigenvalues in mm^2/s, descending.
    evecs : ndarray, (X, Y, Z, 3, 3)
        Eigenvectors as columns: ``evecs[..., :, k]`` goes with ``evals[..., k]``.
    s0 : ndarray, (X, Y, Z)
        The fitted non-weighted signal ``S0_hat``.
    mask : ndarray of bool, (X, Y, Z)
    """

    evals: np.ndarray
    evecs: np.ndarray
    s0: np.ndarray
    mask: np.ndarray
    params: dict = field(default_factory=dict)

    @cached_property
    def fa(self) -> np.ndarray:
        return T.fractional_anisotropy(self.evals).numpy()

    @cached_property
    def md(self) -> np.ndarray:
        return T.mean_diffusivity(self.evals).numpy()

    @property
    def ad(self) -> np.ndarray:
        return T.axial_diffusivity(self.evals).numpy()

    @property
    def rd(self) -> np.ndarray:
        return T.radial_diffusivity(self.evals).numpy()

    @property
    def color_fa(self) -> np.ndarray:
        return T.color_fa(self.fa, self.evecs).numpy()

    @property
    def v1(self) -> np.ndarray:
        """Principal eigenvector ``(X, Y, Z, 3)`` in the data-array frame."""
        return self.evecs[..., :, 0]

    @property
    def quadratic_form(self) -> np.ndarray:
        """Tensors as ``(X, Y, Z, 3, 3)`` matrices rebuilt from the clipped eigenvalues."""
        return T.quadratic_form(self.evals, self.evecs).numpy()

    def lower_triangular(self, fmt: str = "dipy", affine: np.ndarray | None = None) -> np.ndarray:
        """The six tensor elements ``(X, Y, Z, 6)`` in DIPY's order, or exported for FSL/MRtrix."""
        lt = T.lower_triangular(T.quadratic_form(self.evals, self.evecs))
        return T.export_tensor(lt, fmt, affine).numpy() * self.mask[..., None]

    def maps(self, tensor_format: str = "dipy", affine: np.ndarray | None = None) -> dict[str, tuple[np.ndarray, str]]:
        """Every map a DTI user expects, as ``name -> (array, description)``."""
        order = {"dipy": "Dxx, Dxy, Dyy, Dxz, Dyz, Dzz (DIPY), data-array frame",
                 "fsl": "Dxx, Dxy, Dxz, Dyy, Dyz, Dzz (FSL dtifit), FSL voxel frame (x flipped if det > 0)",
                 "mrtrix": "D11, D22, D33, D12, D13, D23 (MRtrix dwi2tensor), scanner RAS axes"}[tensor_format]
        return {
            "tensor": (self.lower_triangular(tensor_format, affine), f"tensor elements in mm^2/s: {order}"),
            "fa": (self.fa, "fractional anisotropy"),
            "md": (self.md, "mean diffusivity, mm^2/s"),
            "ad": (self.ad, "axial diffusivity (largest eigenvalue), mm^2/s"),
            "rd": (self.rd, "radial diffusivity (mean of the two smaller eigenvalues), mm^2/s"),
            "rgb": (self.color_fa, "colour FA: |v1| (x, y, z as RGB) times FA"),
            "evals": (self.evals, "eigenvalues, descending, mm^2/s"),
            "evecs": (self.evecs, "eigenvectors as columns, evecs[..., :, k] with evals[..., k], data-array frame"),
            "v1": (self.v1, "principal eigenvector, data-array frame"),
            "s0": (self.s0, "fitted non-weighted signal S0"),
        }


class TensorModel:
    """Diffusion tensor model, fitted by OLS or WLS (DIPY's ``TensorModel`` numbers).

    Parameters
    ----------
    gtab : GradientTable
        b-values and unit directions in the data-array frame.
    fit_method : {"WLS", "OLS"}
    min_signal : float
        Signal values below this are raised to it before taking logs.
    """

    def __init__(self, gtab: GradientTable, fit_method: str = "WLS", min_signal: float = MIN_SIGNAL):
        method = fit_method.upper()
        if method not in FIT_METHODS:
            raise ConfigError(f"fit_method must be one of {', '.join(FIT_METHODS)}, got {fit_method!r}")
        if not min_signal > 0:
            raise ConfigError(f"min_signal must be strictly positive, got {min_signal}")
        self.gtab, self.fit_method, self.min_signal = gtab, method, float(min_signal)
        self.design_matrix = design_matrix(gtab)
        if np.linalg.matrix_rank(self.design_matrix) < 7:
            raise ConfigError("the gradient scheme cannot determine a tensor: it needs a b0 (or a second "
                              "b-value) and at least 6 non-coplanar diffusion directions")
        self.min_diffusivity = EIGENVALUE_TOL / -self.design_matrix.min()

    @property
    def params(self) -> dict:
        return {"model": "DTI", "fit_method": self.fit_method, "min_signal": self.min_signal,
                "min_diffusivity": self.min_diffusivity, "tensor_order": list(T.DIPY_ORDER),
                "units": "mm^2/s"}

    def kernel(self, device: torch.device, dtype: torch.dtype):
        """The per-chunk function ``(V, N) signal -> {evals, evecs, s0}``."""
        X = torch.as_tensor(self.design_matrix, device=device, dtype=dtype)

        def kernel(signal: torch.Tensor) -> dict[str, torch.Tensor]:
            beta = fit_log_linear(signal, X, self.fit_method, self.min_signal)
            evals, evecs = T.decompose(beta[:, :6], self.min_diffusivity)
            return {"evals": evals, "evecs": evecs, "s0": torch.exp(-beta[:, 6])}

        return kernel

    def fit(self, data: np.ndarray | MaskedSignal, mask: np.ndarray | None = None, *,
            device: str | torch.device = "cpu", dtype: str | torch.dtype = "float64", chunk_size: int | None = None,
            progress: bool | None = None) -> TensorFit:
        """Fit every voxel of ``mask`` (all voxels when None); others get zeros.

        ``chunk_size`` None: 4,096 voxels on CPU, 50,000 on CUDA, fewer when free memory is short (a WLS chunk
        holds about six float64 copies of its signal).
        """
        if data.shape[-1] != len(self.design_matrix):
            raise ConfigError(f"data has {data.shape[-1]} volumes but the gradient table {len(self.design_matrix)}")
        rows, mask = masked_rows(data, mask)
        device, dtype = resolve_device(device), resolve_dtype(dtype)
        chunk_size = chunk_size or chunk_for(48 * data.shape[-1] + 1024, device, default_chunk(device), minimum=256)
        out = map_chunks(self.kernel(device, dtype), rows, device=device, dtype=dtype,
                         chunk_size=chunk_size, progress=progress, desc=f"DTI {self.fit_method}")
        return TensorFit(unmask(out["evals"], mask), unmask(out["evecs"], mask), unmask(out["s0"], mask),
                         mask, self.params)
