"""Diffusion-tensor algebra in torch: element orders, eigen-decomposition, scalar maps.

Tensors are stored as their six unique elements in DIPY's order (Dxx, Dxy, Dyy, Dxz,
Dyz, Dzz), in mm^2/s, in the frame of the data array. Everything here takes and returns
torch tensors (numpy arrays are accepted and converted), works on any device and carries
gradients, so the learned tensor estimators reuse it unchanged.

Exports to other tools (:func:`export_tensor`) change both the element order and, where
the tool expects it, the frame:

- ``dipy``: (Dxx, Dxy, Dyy, Dxz, Dyz, Dzz), data-array frame;
- ``fsl``: dtifit's (Dxx, Dxy, Dxz, Dyy, Dyz, Dzz), in FSL's voxel frame (x flipped when
  the affine's determinant is positive, as for ``.bvec`` files);
- ``mrtrix``: dwi2tensor's (D11, D22, D33, D12, D13, D23), in scanner (RAS mm) axes
  (rotated by the orthogonal part of the affine).
"""

from __future__ import annotations

import numpy as np
import torch

DIPY_ORDER = ("Dxx", "Dxy", "Dyy", "Dxz", "Dyz", "Dzz")
# (row, col) of each stored element, per format
_PAIRS = {
    "dipy": ((0, 0), (0, 1), (1, 1), (0, 2), (1, 2), (2, 2)),
    "fsl": ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)),
    "mrtrix": ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)),
}
TENSOR_FORMATS = tuple(_PAIRS)


def _t(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def from_lower_triangular(lt, fmt: str = "dipy") -> torch.Tensor:
    """Six elements ``(..., 6)`` in format ``fmt`` -> symmetric matrices ``(..., 3, 3)``."""
    lt = _t(lt)
    rows = []
    index = {pair: k for k, pair in enumerate(_PAIRS[fmt])}
    for i in range(3):
        rows.append(torch.stack([lt[..., index[(min(i, j), max(i, j))]] for j in range(3)], dim=-1))
    return torch.stack(rows, dim=-2)


def lower_triangular(matrix, fmt: str = "dipy") -> torch.Tensor:
    """Symmetric matrices ``(..., 3, 3)`` -> six elements ``(..., 6)`` in format ``fmt``."""
    matrix = _t(matrix)
    return torch.stack([matrix[..., i, j] for i, j in _PAIRS[fmt]], dim=-1)


def quadratic_form(evals, evecs) -> torch.Tensor:
    """``V diag(evals) V^T`` from eigenvalues ``(..., 3)`` and column eigenvectors ``(..., 3, 3)``."""
    evals, evecs = _t(evals), _t(evecs)
    return (evecs * evals[..., None, :]) @ evecs.transpose(-1, -2)


def eigh3(lt, max_sweeps: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-decomposition of symmetric 3x3 tensors given as six DIPY-order elements.

    Cyclic Jacobi rotations, vectorised over all tensors: a handful of elementwise
    operations per rotation instead of one LAPACK call per 3x3 matrix, which makes it
    several times faster than ``torch.linalg.eigh`` on large batches on CPU, and it runs
    on any device. Converges quadratically; sweeps stop when every off-diagonal element
    is below machine precision relative to its tensor's norm.

    Returns
    -------
    evals : (..., 3), descending
    evecs : (..., 3, 3), columns, ``evecs[..., :, k]`` with ``evals[..., k]``
    """
    lt = _t(lt)
    shape = lt.shape[:-1]
    scale = lt.abs().amax(dim=-1, keepdim=True)  # work on unit-scale tensors: no over- or underflow
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    lt = lt / scale
    a = {(0, 0): lt[..., 0], (0, 1): lt[..., 1], (1, 1): lt[..., 2], (0, 2): lt[..., 3], (1, 2): lt[..., 4],
         (2, 2): lt[..., 5]}
    one, zero = torch.ones_like(lt[..., 0]), torch.zeros_like(lt[..., 0])
    v = [[one if i == j else zero for j in range(3)] for i in range(3)]  # v[row][col]
    tol = (torch.finfo(lt.dtype).eps * torch.linalg.vector_norm(lt, dim=-1)) ** 2
    for _ in range(max_sweeps):
        if not bool(((a[0, 1] ** 2 + a[0, 2] ** 2 + a[1, 2] ** 2) > tol).any()):
            break
        for p, q, r in ((0, 1, 2), (0, 2, 1), (1, 2, 0)):
            apq = a[p, q]
            flat = apq == 0
            theta = (a[q, q] - a[p, p]) / (2 * torch.where(flat, one, apq))
            t = torch.where(theta >= 0, one, -one) / (theta.abs() + torch.hypot(theta, one))
            t = torch.where(flat, zero, t)
            c = torch.rsqrt(t * t + 1)
            s = t * c
            rp, rq = (min(r, p), max(r, p)), (min(r, q), max(r, q))
            a[p, p], a[q, q], a[p, q] = a[p, p] - t * apq, a[q, q] + t * apq, zero
            a[rp], a[rq] = c * a[rp] - s * a[rq], s * a[rp] + c * a[rq]
            for i in range(3):
                v[i][p], v[i][q] = c * v[i][p] - s * v[i][q], s * v[i][p] + c * v[i][q]
    evals = torch.stack([a[0, 0], a[1, 1], a[2, 2]], dim=-1) * scale
    evecs = torch.stack([torch.stack(row, dim=-1) for row in v], dim=-2)
    order = torch.argsort(evals, dim=-1, descending=True)
    evals = torch.gather(evals, -1, order)
    evecs = torch.gather(evecs, -1, order[..., None, :].expand(*shape, 3, 3))
    return evals, evecs


def decompose(lt, min_diffusivity: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending, clipped below at ``min_diffusivity``) and column eigenvectors.

    As :func:`dipy.reconst.dti.decompose_tensor`: ``evecs[..., :, k]`` goes with
    ``evals[..., k]``; negative eigenvalues, which are not physical, become
    ``min_diffusivity``.
    """
    evals, evecs = eigh3(lt)
    return evals.clamp(min=min_diffusivity), evecs


def fractional_anisotropy(evals) -> torch.Tensor:
    """FA = sqrt(1/2) * |eigenvalue differences| / |eigenvalues|; 0 where all eigenvalues are 0."""
    evals = _t(evals)
    l1, l2, l3 = evals.unbind(-1)
    num = (l1 - l2) ** 2 + (l2 - l3) ** 2 + (l3 - l1) ** 2
    den = (evals * evals).sum(-1)
    zero = den == 0
    return torch.sqrt(0.5 * num / torch.where(zero, torch.ones_like(den), den)).masked_fill(zero, 0.0)


def mean_diffusivity(evals) -> torch.Tensor:
    """MD, the mean eigenvalue."""
    return _t(evals).mean(-1)


def axial_diffusivity(evals) -> torch.Tensor:
    """AD, the largest eigenvalue (evals sorted descending)."""
    return _t(evals)[..., 0]


def radial_diffusivity(evals) -> torch.Tensor:
    """RD, the mean of the two smaller eigenvalues."""
    return _t(evals)[..., 1:].mean(-1)


def color_fa(fa, evecs) -> torch.Tensor:
    """Colour FA ``(..., 3)``: |principal eigenvector| (x, y, z as RGB) times FA clipped to [0, 1]."""
    return _t(evecs)[..., :, 0].abs() * _t(fa).clamp(0, 1)[..., None]


def export_tensor(lt, fmt: str, affine: np.ndarray | None = None) -> torch.Tensor:
    """Tensors in DIPY order and array frame -> the element order and frame of ``fmt``.

    ``fsl`` and ``mrtrix`` need the image ``affine`` to know the frame (see module notes).
    """
    if fmt not in _PAIRS:
        raise ValueError(f"unknown tensor format {fmt!r}; expected one of {', '.join(TENSOR_FORMATS)}")
    matrix = from_lower_triangular(lt)
    if fmt != "dipy":
        if affine is None:
            raise ValueError(f"exporting tensors for {fmt} needs the image affine")
        linear = np.asarray(affine, dtype=np.float64)[:3, :3]
        if fmt == "fsl":
            rotation = np.diag([-1.0 if np.linalg.det(linear) > 0 else 1.0, 1.0, 1.0])
        else:  # the orthogonal factor of the affine's polar decomposition (exact for any shear or zoom)
            u, _, vt = np.linalg.svd(linear)
            rotation = u @ vt
        r = torch.as_tensor(rotation, dtype=matrix.dtype, device=matrix.device)
        matrix = r @ matrix @ r.T
    return lower_triangular(matrix, fmt)
