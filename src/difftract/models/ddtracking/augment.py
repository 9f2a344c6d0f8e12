"""The 48 symmetries of the voxel grid, applied exactly to a DDTracking training sample.

A signed permutation ``R`` of the array axes (6 permutations x 8 sign patterns) maps the
voxel grid onto itself. Turning a whole subject by ``R`` about a point gives another subject
the simulator could have made: the SH field becomes ``V'(x) = M V(R^T x)``, where ``M`` turns
the coefficients so that ``f'(u) = f(R^T u)``, and a streamline's directions become ``R d``.
For one sample (a window of points with their 3x3x3 neighbourhoods) that is:

- neighbourhood: ``patch'[o] = M patch[R^T o]`` for each of the 27 offsets ``o`` (an offset
  maps to an offset, so nothing is interpolated);
- previous and target directions: ``d' = R d``.

``M`` is exact, not fitted to data: each order ``l`` of the harmonics spans a space that any
orthogonal map keeps, so the least-squares fit of the turned basis on a sphere of directions
recovers it to rounding (:func:`sh_matrix`). With isotropic voxels, as in every training
phantom, the sample is then exactly the one the turned subject gives; the SH are in the
data-array frame (``load_dwi`` undoes FSL's flip), the frame of the streamline points.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import torch

from ...reconst.peaks import default_sphere
from ...reconst.sh import lmax_from_ncoeffs, sh_basis
from .features import OFFSETS


def grid_symmetries() -> np.ndarray:
    """The 48 signed permutation matrices ``(48, 3, 3)``, the identity first."""
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            R = np.zeros((3, 3))
            R[np.arange(3), perm] = signs
            out.append(R)
    return np.stack(out)


def sh_matrix(R: np.ndarray, lmax: int) -> np.ndarray:
    """``M (m, m)`` with ``sum_j (M c)_j Y_j(u) = sum_j c_j Y_j(R^T u)`` (descoteaux07, even orders)."""
    hemisphere = np.asarray(default_sphere().vertices)
    u = np.concatenate([hemisphere, -hemisphere])          # the whole sphere: the fit is well posed
    B = sh_basis(u, lmax, False)[0]
    turned = sh_basis(u @ R, lmax, False)[0]               # rows are R^T u
    return np.linalg.lstsq(B, turned, rcond=None)[0]


@functools.lru_cache(maxsize=4)
def grid_symmetries_for(n_coeffs: int) -> GridSymmetries:
    """:class:`GridSymmetries` of ``n_coeffs`` SH coefficients, made once (48 fits, about 0.3 s) and shared
    by every dataset (a stream builds one per new set of subjects)."""
    return GridSymmetries(n_coeffs)


class GridSymmetries:
    """The 48 symmetries for SH of ``n_coeffs`` coefficients: ``apply(g, patches, prev, target)``."""

    def __init__(self, n_coeffs: int):
        lmax = lmax_from_ncoeffs(n_coeffs)
        self.R = grid_symmetries()
        # float64, cast where used: a sample's dtype in training, the scan's in tracking (.symmetrise)
        self.M = torch.as_tensor(np.stack([sh_matrix(R, lmax) for R in self.R]), dtype=torch.float64)
        offsets = OFFSETS.numpy().astype(int)
        where = {tuple(o): i for i, o in enumerate(offsets)}
        # source[g, i]: the offset whose values land on offset i, R^T o_i
        self.source = torch.tensor([[where[tuple(o)] for o in offsets @ R] for R in self.R])
        self.Rt = torch.as_tensor(self.R.transpose(0, 2, 1).copy(), dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.R)

    def apply(self, g: int, patches: torch.Tensor, prev: torch.Tensor, target: torch.Tensor):
        """Symmetry ``g`` of a sample: ``patches (T, m, 3, 3, 3)``, ``prev`` and ``target`` ``(T, 3)``."""
        T, m = patches.shape[:2]
        flat = patches.reshape(T, m, 27)[:, :, self.source[g].to(patches.device)]
        turned = torch.einsum("ij,tjk->tik", self.M[g].to(patches.device, patches.dtype), flat).reshape(patches.shape)
        Rt = self.Rt[g].to(prev.device, prev.dtype)
        return turned, prev @ Rt, target @ Rt
