"""The ``peak`` direction rule: a smooth, differentiable blend of per-voxel peak vectors.

At a point, each of the 8 surrounding voxels offers the one of its peaks closest to the
previous direction (flipped to agree with it); the 8 are blended with the trilinear
weights of DIPY's interpolation and normalised (EuDX-style). Choosing the peak is a
discrete decision with no gradient, but the blend is a smooth function of the peak
vectors and of the position, so gradients flow from streamline points back to the peak
field (and through it to whatever produced it: a tensor fit, a network).

A direction is invalid where no voxel offers a peak within ``max_angle`` of the
previous direction, or where the point is outside the grid.
"""

from __future__ import annotations

import math

import torch

from .integrators import normalize
from .interpolate import corner_table


class PeakField:
    """Direction getter over a ``(X, Y, Z, npeaks, 3)`` peak field (zero vectors: no peak).

    Parameters
    ----------
    peaks : Tensor
        Peak directions per voxel, any length (only their direction counts), data-array frame.
    max_angle : float
        Degrees; peaks farther than this from the previous direction are not followed.
    """

    def __init__(self, peaks: torch.Tensor, max_angle: float = 45.0):
        if peaks.dim() == 4:
            peaks = peaks.reshape(*peaks.shape[:3], -1, 3)
        if peaks.dim() != 5 or peaks.shape[-1] != 3:
            raise ValueError(f"peaks must be (X, Y, Z, npeaks, 3) or (X, Y, Z, 3 * npeaks), got {tuple(peaks.shape)}")
        self.peaks = peaks.contiguous()     # C order once (see interpolate.grid_volume)
        self.cos_max_angle = math.cos(math.radians(max_angle))

    def __call__(self, points: torch.Tensor, prev_dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.directions(points, prev_dirs)

    def directions(self, points: torch.Tensor, prev_dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit directions ``(N, 3)`` and a validity mask ``(N,)``.

        The 8 corners are handled at once; their contributions are added in DIPY's corner
        order, one after the other.
        """
        peaks = self.peaks
        flat = peaks.reshape(-1, peaks.shape[-2], 3)
        cells, weights, inside = corner_table(peaks.shape, points)                # (N, 8)
        candidates = flat[cells]                                                  # (N, 8, npeaks, 3)
        unit = normalize(candidates)
        cos = (unit * prev_dirs[:, None, None, :]).sum(dim=-1)                   # signed, (N, 8, npeaks)
        present = torch.linalg.vector_norm(candidates, dim=-1) > 0
        score = torch.where(present, cos.abs(), torch.full_like(cos, -1.0))
        top, best = score.max(dim=2)                                              # (N, 8)
        ok = top >= self.cos_max_angle
        sign = torch.where(cos.gather(2, best[..., None])[..., 0] < 0, -1.0, 1.0).to(points.dtype)
        chosen = unit.gather(2, best[..., None, None].expand(*best.shape, 1, 3))[:, :, 0]   # (N, 8, 3)
        contrib = ((weights.to(points.dtype) * ok.to(points.dtype) * sign)[..., None] * chosen)
        blend = contrib[:, 0]
        for c in range(1, 8):
            blend = blend + contrib[:, c]
        any_peak = (ok & (weights > 0)).any(dim=1)
        norm = torch.linalg.vector_norm(blend, dim=-1)
        valid = inside & any_peak & (norm > 1e-8)
        return normalize(blend), valid
