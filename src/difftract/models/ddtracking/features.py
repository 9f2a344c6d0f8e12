"""DDTracking's local input: SH coefficients sampled on a 3x3x3 neighbourhood of each point.

The feature volume holds the descoteaux07 SH coefficients (lmax 6: 28) of the b0-normalised
DWI (DESIGN's normalisation, :class:`difftract.reconst.sh.SHModel`). For each continuous
streamline point (voxel coordinates) the coefficients are interpolated trilinearly at the 27
points ``p + {-1, 0, 1}^3`` voxels, giving a tensor ``(N, m, 3, 3, 3)`` whose spatial axes
are the x, y, z offsets. Points off the grid read zeros, as the tracker's interpolation
does; everything is torch, so gradients reach the volume and the points.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from ...tracking.interpolate import trilinear

OFFSETS = torch.tensor(list(itertools.product((-1.0, 0.0, 1.0), repeat=3)))   # (27, 3), x slowest


def neighbourhood(sh: Tensor, points: Tensor) -> Tensor:
    """Samples of ``sh`` ``(X, Y, Z, m)`` around ``points`` ``(N, 3)``: ``(N, m, 3, 3, 3)``."""
    offsets = OFFSETS.to(device=points.device, dtype=points.dtype)
    where = (points[:, None, :] + offsets[None]).reshape(-1, 3)
    values, _ = trilinear(sh, where)
    return values.reshape(len(points), 3, 3, 3, sh.shape[-1]).permute(0, 4, 1, 2, 3)
