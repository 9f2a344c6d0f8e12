"""Principal directions of a tensor field, with a gradient that stays finite.

The exact derivative of the principal eigenvector ``v1`` of a symmetric ``D`` is
``dv1 = sum_j (v_j^T dD v1) / (l1 - l_j) v_j``: it blows up where eigenvalues meet
(isotropic or oblate voxels), and ``torch.linalg.eigh``'s backward with it. Here ``v1`` is
found without a graph and then refined by ``k`` power iterations ``v <- A v / |A v|`` with
``A = D + s I`` and ``s = max(0, -l3)`` (no graph through ``s``), which make every eigenvalue
of ``A`` non-negative without changing the eigenvectors. The iterations leave ``v1``'s value
unchanged (it is an eigenvector) but carry the gradient
``sum_j (1 - r_j^k) / (l1 - l_j) (v_j^T dD v1) v_j`` with ``r_j = (l_j + s) / (l1 + s)``: the
exact one where the eigenvalues are well apart, at most ``k / (l1 + s)`` in size where they
meet. Tensors whose largest eigenvalue is not positive give no direction.
"""

from __future__ import annotations

import torch

from ..reconst import tensor as T
from ..tracking.integrators import normalize


def principal_direction(lt: torch.Tensor, iterations: int = 8) -> torch.Tensor:
    """Unit principal eigenvectors ``(..., 3)`` of tensors ``lt (..., 6)`` (DIPY's element order).

    Zero where the tensor is zero or its largest eigenvalue is not positive.
    """
    D = T.from_lower_triangular(lt)
    with torch.no_grad():
        evals, evecs = torch.linalg.eigh(D.double())
        v = evecs[..., :, -1].to(lt.dtype)
        usable = evals[..., -1] > 0
        shift = (-evals[..., 0]).clamp(min=0).to(lt.dtype)
    A = D + shift[..., None, None] * torch.eye(3, dtype=lt.dtype, device=lt.device)
    for _ in range(iterations):
        v = normalize(torch.einsum("...ij,...j->...i", A, v))
    return v * usable[..., None].to(lt.dtype)


def tensor_peaks(lt: torch.Tensor, mask: torch.Tensor | None = None, iterations: int = 8) -> torch.Tensor:
    """A one-peak field ``(X, Y, Z, 1, 3)`` for :class:`~difftract.tracking.getters.PeakGetter`.

    Voxels outside ``mask`` get no peak.
    """
    v = principal_direction(lt, iterations)
    if mask is not None:
        v = v * torch.as_tensor(mask, device=v.device).to(v.dtype)[..., None]
    return v[..., None, :]
