"""Sampling volumes at continuous voxel coordinates, batched and differentiable.

Voxel centres are at integer coordinates. Trilinear interpolation follows DIPY's
``trilinear_interpolate4d``: a point is inside when ``-0.5 <= p < dim - 0.5`` on every
axis, and the half voxel beyond the outer centres replicates the edge values. Gradients
flow to the volume (through the gathered values) and to the points (through the
weights); ``floor`` itself has none, so the result is piecewise linear in the points.
"""

from __future__ import annotations

import torch


def _dims(volume: torch.Tensor, device) -> torch.Tensor:
    return torch.tensor(volume.shape[:3], device=device)


def inside_grid(volume: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Whether each point ``(N, 3)`` is where DIPY interpolates: ``-0.5 <= p < dim - 0.5``."""
    upper = _dims(volume, points.device).to(points.dtype) - 0.5
    return ((points >= -0.5) & (points < upper)).all(dim=-1)


def corners(shape: tuple[int, ...], points: torch.Tensor):
    """The 8 neighbouring voxels of each point and their trilinear weights, in DIPY's order.

    Yields ``(cell, weight)`` pairs: C-order flat voxel indices ``(N,)`` into a grid of
    ``shape[:3]`` and weights ``(N,)`` (zero for points outside, see :func:`inside_grid`).
    The half voxel beyond the outer centres replicates the edge voxel.
    """
    dims = torch.tensor(shape[:3], device=points.device)
    upper = dims.to(points.dtype) - 0.5
    inside = ((points >= -0.5) & (points < upper)).all(dim=-1)
    safe = torch.where(inside[:, None], points, torch.zeros_like(points))
    floor = torch.floor(safe)
    rem = safe - floor
    flr = floor.long()
    index = torch.stack([flr + (flr == -1).long(),            # the half voxel below the first centre
                         flr + (flr != dims - 1).long()], -1)  # the half voxel above the last centre
    weights = torch.stack([1 - rem, rem], dim=-1) * inside[:, None, None].to(points.dtype)
    for i in range(2):                                          # the order of DIPY's loops (same rounding)
        for j in range(2):
            for k in range(2):
                cell = (index[:, 0, i] * dims[1] + index[:, 1, j]) * dims[2] + index[:, 2, k]
                yield cell, weights[:, 0, i] * weights[:, 1, j] * weights[:, 2, k]


def trilinear(volume: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Trilinear samples of ``volume`` ``(X, Y, Z)`` or ``(X, Y, Z, C)`` at ``points`` ``(N, 3)``.

    Returns
    -------
    values : (N,) or (N, C)
        Zero where the point is outside.
    inside : (N,) bool
    """
    scalar = volume.dim() == 3
    vol = volume.unsqueeze(-1) if scalar else volume
    flat = vol.reshape(-1, vol.shape[-1])
    out = torch.zeros(points.shape[0], vol.shape[-1], dtype=vol.dtype, device=vol.device)
    for cell, w in corners(vol.shape, points):
        out = out + w[:, None].to(vol.dtype) * flat[cell]
    return (out[:, 0] if scalar else out), inside_grid(vol, points)


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
