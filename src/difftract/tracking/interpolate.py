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
    dims = _dims(vol, points.device)
    inside = inside_grid(vol, points)
    safe = torch.where(inside[:, None], points, torch.zeros_like(points))
    floor = torch.floor(safe)
    rem = safe - floor
    flr = floor.long()
    low = flr + (flr == -1).long()                      # the half voxel below the first centre
    high = flr + (flr != dims - 1).long()               # the half voxel above the last centre
    weights = torch.stack([1 - rem, rem], dim=-1)       # (N, 3, 2)
    index = torch.stack([low, high], dim=-1)            # (N, 3, 2)
    flat = vol.reshape(-1, vol.shape[-1])
    strides = (dims[1] * dims[2], dims[2])
    out = torch.zeros(points.shape[0], vol.shape[-1], dtype=vol.dtype, device=vol.device)
    for i in range(2):                                  # the order of DIPY's loops (same rounding)
        for j in range(2):
            for k in range(2):
                w = weights[:, 0, i] * weights[:, 1, j] * weights[:, 2, k]
                cell = index[:, 0, i] * strides[0] + index[:, 1, j] * strides[1] + index[:, 2, k]
                out = out + w[:, None].to(vol.dtype) * flat[cell]
    out = out * inside[:, None].to(out.dtype)
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
