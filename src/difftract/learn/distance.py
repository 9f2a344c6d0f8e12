"""Distance-to-region maps, sampled at continuous points with a gradient.

A region is a boolean volume; its map holds, at every voxel centre, the Euclidean distance
in mm to the nearest voxel centre of the region (zero inside; ``scipy.ndimage``'s exact
transform with the voxel sizes). Sampled trilinearly, it is piecewise linear in the point,
so a loss on it pulls points towards the region. A point off the grid is first clamped to
it and then charged its distance (mm) to the clamped point.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from ..errors import ConfigError
from ..tracking.interpolate import trilinear


class DistanceMaps:
    """Distance maps of ``C`` regions on one grid, ``volume (X, Y, Z, C)`` in mm.

    Parameters
    ----------
    regions : sequence of (X, Y, Z) bool arrays, or a (C, X, Y, Z) array
        An empty region gets a distance larger than the grid's diagonal everywhere.
    voxel_sizes : sequence of 3 float
    """

    def __init__(self, regions, voxel_sizes, *, dtype: torch.dtype = torch.float32, device="cpu"):
        regions = [np.asarray(r, dtype=bool) for r in regions]
        if not regions or any(r.ndim != 3 or r.shape != regions[0].shape for r in regions):
            raise ConfigError("distance maps need one or more 3D regions of the same shape")
        self.voxel_sizes = np.asarray(voxel_sizes, dtype=np.float64)
        far = float(np.linalg.norm(np.array(regions[0].shape) * self.voxel_sizes)) + 1.0
        maps = [ndimage.distance_transform_edt(~r, sampling=self.voxel_sizes) if r.any()
                else np.full(r.shape, far) for r in regions]
        self.volume = torch.as_tensor(np.stack(maps, -1), dtype=dtype, device=device)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.volume.shape[:3])

    def to(self, device=None, dtype=None) -> DistanceMaps:
        out = object.__new__(DistanceMaps)
        out.voxel_sizes = self.voxel_sizes
        out.volume = self.volume.to(device=device, dtype=dtype)
        return out

    def sample(self, points: torch.Tensor) -> torch.Tensor:
        """Distances ``(N, C)`` in mm from ``points (N, 3)`` (voxel coordinates) to each region."""
        upper = torch.tensor(self.shape, dtype=points.dtype, device=points.device) - 0.5
        eps = 1e-4
        clamped = torch.maximum(torch.minimum(points, upper - eps), torch.full_like(points, -0.5))
        if self.volume.device != points.device or self.volume.dtype != points.dtype:
            self.volume = self.volume.to(device=points.device, dtype=points.dtype)   # kept there for the next call
        values, _ = trilinear(self.volume, clamped)
        sizes = torch.as_tensor(self.voxel_sizes, dtype=points.dtype, device=points.device)
        beyond = torch.linalg.vector_norm((points - clamped) * sizes, dim=-1)
        return values + beyond[:, None]
