"""Seed points in voxel coordinates: DIPY's regular grid per voxel, or random per voxel.

Seeds come out in the order of the mask's voxels (C order), all seeds of a voxel
together, so a seed file, a chunk of seeds and a streamline index line up.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError

# Random seeds per seed-mask voxel when nobody says (DDTracking's come from its weights):
# one per voxel covers a brain's white matter in about as many seeds as MRtrix's usual counts.
SEEDS_PER_VOXEL = 1


def _voxels(mask) -> torch.Tensor:
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ConfigError(f"the seed mask must be 3D, got shape {mask.shape}")
    voxels = torch.as_tensor(np.argwhere(mask > 0), dtype=torch.float64)
    if len(voxels) == 0:
        raise ConfigError("the seed mask is empty: no voxel to seed from")
    return voxels


def grid_seeds(mask, density: int | tuple[int, int, int] = 1, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """DIPY's ``seeds_from_mask(mask, np.eye(4), density)``: a regular d0 x d1 x d2 grid in every voxel.

    The offsets are ``(i + 0.5) / d - 0.5`` per axis (x varying fastest), so density 1
    seeds the voxel centres.
    """
    d = (density,) * 3 if np.isscalar(density) else tuple(density)
    if len(d) != 3 or min(d) < 1 or any(int(v) != v for v in d):
        raise ConfigError(f"seed density must be a positive integer (or three), got {density!r}")
    grid = torch.stack(torch.meshgrid(*[torch.arange(int(n), dtype=torch.float64) for n in d], indexing="ij"), dim=-1)
    grid = grid.permute(2, 1, 0, 3).reshape(-1, 3)     # x varies fastest, as DIPY orders them
    size = torch.tensor(d, dtype=torch.float64)
    offsets = grid / size + (0.5 / size - 0.5)
    seeds = _voxels(mask)[:, None, :] + offsets[None]
    return seeds.reshape(-1, 3).to(dtype)


def random_seeds(mask, per_voxel: int, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``per_voxel`` seeds drawn uniformly in each voxel of ``mask`` ([-0.5, 0.5) around its centre)."""
    if not (isinstance(per_voxel, (int, np.integer)) and per_voxel >= 1):
        raise ConfigError(f"seeds per voxel must be a positive integer, got {per_voxel!r}")
    voxels = _voxels(mask)
    offsets = torch.rand((len(voxels), int(per_voxel), 3), generator=generator, dtype=torch.float64) - 0.5
    return (voxels[:, None, :] + offsets).reshape(-1, 3).to(dtype)
