"""Small synthetic fields for the differentiable-tractography tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def tensor_along(directions: np.ndarray, l1: float = 1.7, l2: float = 0.3) -> np.ndarray:
    """DIPY-ordered elements (..., 6) of tensors with principal directions ``directions (..., 3)``."""
    v = directions / np.linalg.norm(directions, axis=-1, keepdims=True)
    D = l2 * np.eye(3) + (l1 - l2) * v[..., :, None] * v[..., None, :]
    return np.stack([D[..., 0, 0], D[..., 0, 1], D[..., 1, 1], D[..., 0, 2], D[..., 1, 2], D[..., 2, 2]], -1)


@pytest.fixture
def straight_field():
    """A 20x10x4 grid whose tensors point along x, turned by up to ~30 degrees at random per voxel."""
    rng = np.random.default_rng(0)
    shape = (20, 10, 4)
    noisy = np.zeros(shape + (3,))
    noisy[..., 0] = 1.0
    noisy[..., 1:] = rng.uniform(-0.55, 0.55, size=shape + (2,)) * [1.0, 0.3]
    mask = np.zeros(shape, bool)
    mask[1:-1, 2:8, 1:3] = True
    lines = [np.stack([np.linspace(1.0, 18.0, 35), np.full(35, y), np.full(35, z)], 1)     # interleaved: the
             for y, z in zip(np.arange(2.6, 7.4, 0.3), np.tile([1.3, 1.7], 8))]                   # even and odd ones share voxels
    return {"lt": torch.as_tensor(tensor_along(noisy), dtype=torch.float32), "mask": mask, "lines": lines,
            "shape": shape}
