"""DDTracking's local input: SH coefficients sampled on a 3x3x3 neighbourhood of each point.

The feature volume holds the descoteaux07 SH coefficients (lmax 6: 28) of the b0-normalised
DWI (DESIGN's normalisation, :class:`difftract.reconst.sh.SHModel`). For each continuous
streamline point (voxel coordinates) the coefficients are interpolated trilinearly at the 27
points ``p + {-1, 0, 1}^3`` voxels, giving a tensor ``(N, m, 3, 3, 3)`` whose spatial axes
are the x, y, z offsets. Points off the grid read zeros, as the tracker's interpolation
does; everything is torch, so gradients reach the volume and the points.

The 27 points are whole voxels apart, so they share one set of trilinear weights: the
samples are the 4x4x4 voxels around the point (one gather, not 27 x 8), interpolated one
axis at a time. Edges follow :func:`~difftract.tracking.interpolate.trilinear` exactly
(the half voxel beyond the outer centres replicates them, and a sample whose point is off
the grid is zero); only the rounding differs, as the weights come from ``p`` rather than
from each ``p + o``.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

OFFSETS = torch.tensor(list(itertools.product((-1.0, 0.0, 1.0), repeat=3)))   # (27, 3), x slowest


def neighbourhood(sh: Tensor, points: Tensor) -> Tensor:
    """Samples of ``sh`` ``(X, Y, Z, m)`` around ``points`` ``(N, 3)``: ``(N, m, 3, 3, 3)``."""
    return samples(sh, points).permute(0, 4, 1, 2, 3)


def samples(sh: Tensor, points: Tensor) -> Tensor:
    """The same samples, channels last: ``(N, 3, 3, 3, m)`` (x, y, z offsets, then coefficients)."""
    N, shape = len(points), sh.shape[:3]
    dims = torch.tensor(shape, device=points.device)
    floor = torch.floor(points)
    rem = (points - floor).to(sh.dtype)                                        # (N, 3), shared by all 27
    block = floor.long()[:, :, None] + torch.arange(-1, 3, device=points.device)   # voxels floor-1 .. floor+2
    block = torch.minimum(block, (dims - 1)[:, None]).clamp_(min=0)           # (N, 3, 4), edges replicated
    block = block * torch.tensor([shape[1] * shape[2], shape[2], 1], device=points.device)[:, None]
    cells = block[:, 0, :, None, None] + block[:, 1, None, :, None] + block[:, 2, None, None, :]   # (N, 4, 4, 4)
    v = sh.reshape(-1, sh.shape[-1]).index_select(0, cells.reshape(-1)).reshape(N, 4, 4, 4, sh.shape[-1])
    w = rem.reshape(N, 3, 1, 1, 1, 1)
    v = torch.lerp(v[:, :3], v[:, 1:], w[:, 0])                                # along x: (N, 3, 4, 4, m)
    v = torch.lerp(v[:, :, :3], v[:, :, 1:], w[:, 1])                          # along y: (N, 3, 3, 4, m)
    v = torch.lerp(v[:, :, :, :3], v[:, :, :, 1:], w[:, 2])                    # along z: (N, 3, 3, 3, m)
    # the sample at p + o is zero off the grid (-0.5 <= p + o < dim - 0.5 fails on some axis)
    shifted = points[:, :, None] + torch.tensor((-1.0, 0.0, 1.0), device=points.device, dtype=points.dtype)
    inside = (shifted >= -0.5) & (shifted < dims[:, None].to(points.dtype) - 0.5)   # (N, 3 axes, 3 offsets)
    if points.device.type != "cpu" or not bool(inside.all()):     # (no host sync on a GPU)
        mask = inside[:, 0, :, None, None] & inside[:, 1, None, :, None] & inside[:, 2, None, None, :]
        v = v * mask[..., None].to(v.dtype)
    return v
