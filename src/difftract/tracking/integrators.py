"""One propagation step for every active streamline: Euler, RK2 (midpoint) and RK4.

A direction field ``f(points, prev_dirs) -> (dirs, valid)`` gives unit directions that
are only defined up to sign (fibre orientations), so every evaluation is flipped to agree
with the direction it refines. Directions are in the voxel frame; a move of ``h`` along
``k`` is ``(k * inv_voxel) * h`` voxels (DIPY's arithmetic, with ``h`` in mm and
``inv_voxel`` the reciprocal voxel sizes), or ``k * h`` without ``inv_voxel``.

- Euler (DIPY's rule): ``p' = p + h f(p)``.
- RK2, midpoint: ``k1 = f(p)``, ``k2 = f(p + h/2 k1)``, ``p' = p + h k2``.
- RK4: ``k1..k4`` at ``p``, ``p + h/2 k1``, ``p + h/2 k2``, ``p + h k3``; the step direction is
  the normalised ``k1 + 2 k2 + 2 k3 + k4``, so every step is exactly ``h`` long (which
  makes the scheme third order on curved paths, against first for Euler). Each ``k``
  must be within ``max_angle`` of the previous step direction (the curvature check), or
  the step is invalid.

A step is valid only where every evaluation it used was valid.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

DirectionField = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
INTEGRATORS = ("euler", "rk2", "rk4")


def align(dirs: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Flip each direction that points away from its reference (orientations have no sign)."""
    sign = torch.where((dirs * reference).sum(dim=-1, keepdim=True) < 0, -1.0, 1.0).to(dirs.dtype)
    return dirs * sign


def normalize(v: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    return v / torch.linalg.vector_norm(v, dim=-1, keepdim=True).clamp(min=eps)


def step(field: DirectionField, points: torch.Tensor, prev_dirs: torch.Tensor, step_size: float,
         method: str = "euler", cos_max_angle: float | None = None,
         inv_voxel: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Advance ``points`` ``(N, 3)`` by one step.

    Returns the new points, the step directions (unit) and a validity mask. The getter
    applies its own cone around ``prev_dirs``; ``cos_max_angle`` adds the curvature check
    on the intermediate RK evaluations.
    """
    if method not in INTEGRATORS:
        raise ValueError(f"unknown integrator {method!r}; expected one of {', '.join(INTEGRATORS)}")
    h = step_size

    def move(p: torch.Tensor, k: torch.Tensor, length: float) -> torch.Tensor:
        return p + (k * inv_voxel) * length if inv_voxel is not None else p + k * length

    k1, valid = field(points, prev_dirs)
    k1 = align(k1, prev_dirs)
    if method == "euler":
        return move(points, k1, h), k1, valid
    if method == "rk2":
        k2, v2 = field(move(points, k1, h / 2), k1)
        k2 = align(k2, k1)
        valid = valid & v2 & _within(k2, prev_dirs, cos_max_angle)
        return move(points, k2, h), k2, valid
    k2, v2 = field(move(points, k1, h / 2), k1)
    k2 = align(k2, k1)
    k3, v3 = field(move(points, k2, h / 2), k2)
    k3 = align(k3, k2)
    k4, v4 = field(move(points, k3, h), k3)
    k4 = align(k4, k3)
    direction = normalize(k1 + 2 * k2 + 2 * k3 + k4)
    valid = valid & v2 & v3 & v4
    for k in (k2, k3, k4):
        valid = valid & _within(k, prev_dirs, cos_max_angle)
    return move(points, direction, h), direction, valid


def _within(dirs: torch.Tensor, prev_dirs: torch.Tensor, cos_max_angle: float | None) -> torch.Tensor:
    if cos_max_angle is None:
        return torch.ones(dirs.shape[0], dtype=torch.bool, device=dirs.device)
    return (dirs * prev_dirs).sum(dim=-1) >= cos_max_angle
