"""Sampling volumes at continuous voxel coordinates, batched and differentiable.

Voxel centres are at integer coordinates. Trilinear interpolation follows DIPY's
``trilinear_interpolate4d``: a point is inside when ``-0.5 <= p < dim - 0.5`` on every
axis, and the half voxel beyond the outer centres replicates the edge values. Gradients
flow to the volume (through the gathered values) and to the points (through the
weights); ``floor`` itself has none, so the result is piecewise linear in the points.
"""

from __future__ import annotations

import numpy as np
import torch


def _dims(volume: torch.Tensor, device) -> torch.Tensor:
    return torch.tensor(volume.shape[:3], device=device)


def inside_grid(volume: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Whether each point ``(N, 3)`` is where DIPY interpolates: ``-0.5 <= p < dim - 0.5``."""
    upper = _dims(volume, points.device).to(points.dtype) - 0.5
    return ((points >= -0.5) & (points < upper)).all(dim=-1)


def corner_table(shape: tuple[int, ...], points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The 8 neighbouring voxels of each point and their trilinear weights, in DIPY's order.

    Returns C-order flat voxel indices ``(N, 8)`` into a grid of ``shape[:3]`` and weights
    ``(N, 8)`` (zero for points outside, see :func:`inside_grid`), corner ``4i + 2j + k``
    being the x-, y-, z-offsets ``(i, j, k)``. The half voxel beyond the outer centres
    replicates the edge voxel. Also returns the ``(N,)`` inside mask.
    """
    dims = torch.tensor(shape[:3], device=points.device)
    upper = dims.to(points.dtype) - 0.5
    inside = ((points >= -0.5) & (points < upper)).all(dim=-1)
    floor = torch.floor(points)
    rem = points - floor
    flr = floor.long()
    last = dims - 1
    # DIPY's i0 = f + (f == -1), i1 = f + (f != dim - 1) for inside points, clamped for the rest
    index = torch.stack([flr.clamp(min=0), flr + 1], dim=-1)
    index = torch.minimum(index, last[:, None]).clamp_(min=0)          # (N, 3, 2)
    index = index * torch.tensor([shape[1] * shape[2], shape[2], 1], device=points.device)[:, None]
    w = torch.stack([1 - rem, rem], dim=-1) * inside[:, None, None].to(points.dtype)   # (N, 3, 2)
    cells = index[:, 0, :, None, None] + index[:, 1, None, :, None] + index[:, 2, None, None, :]
    weights = w[:, 0, :, None, None] * w[:, 1, None, :, None] * w[:, 2, None, None, :]
    return cells.reshape(-1, 8), weights.reshape(-1, 8), inside


def corners(shape: tuple[int, ...], points: torch.Tensor):
    """Iterate over :func:`corner_table`'s columns: ``(cell (N,), weight (N,))`` pairs."""
    cells, weights, _ = corner_table(shape, points)
    for c in range(8):
        yield cells[:, c], weights[:, c]


def grid_volume(array) -> torch.Tensor:
    """``array`` as a C-contiguous tensor, once, for :func:`trilinear` to read at every step.

    NIfTI arrays come Fortran-ordered from nibabel; flattening such a tensor (as
    :func:`trilinear` does) copies the whole volume, which for a whole-brain fODF (0.7 GB)
    made every tracking step take most of a second.
    """
    t = array if isinstance(array, torch.Tensor) else torch.as_tensor(np.asarray(array))
    return t.contiguous()


def trilinear(volume: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Trilinear samples of ``volume`` ``(X, Y, Z)`` or ``(X, Y, Z, C)`` at ``points`` ``(N, 3)``.

    The corners are summed in DIPY's order (fused multiply-adds may round the last bit
    differently).

    Returns
    -------
    values : (N,) or (N, C)
        Zero where the point is outside.
    inside : (N,) bool
    """
    scalar = volume.dim() == 3
    vol = volume.unsqueeze(-1) if scalar else volume
    flat = vol.reshape(-1, vol.shape[-1])
    cells, weights, inside = corner_table(vol.shape, points)   # inside computed once per call
    weights = weights.to(vol.dtype)
    out = flat.index_select(0, cells[:, 0]) * weights[:, :1]
    for c in range(1, 8):
        out.addcmul_(flat.index_select(0, cells[:, c]), weights[:, c:c + 1])
    return (out[:, 0] if scalar else out), inside


def nearest(volume: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Value of the nearest voxel (coordinates rounded half to even, as DIPY's ``rint``).

    Returns the values (zero outside) and whether the rounded voxel is on the grid.
    """
    voxel = torch.round(points).long()
    dims = _dims(volume, points.device)
    inside = ((voxel >= 0) & (voxel < dims)).all(dim=-1)
    voxel = torch.where(inside[:, None], voxel, torch.zeros_like(voxel))
    values = volume[voxel[:, 0], voxel[:, 1], voxel[:, 2]]
    zero = torch.zeros((), dtype=volume.dtype, device=volume.device)
    mask = inside.view(-1, *([1] * (values.dim() - 1)))
    return torch.where(mask, values, zero), inside
