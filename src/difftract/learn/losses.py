"""Losses on streamlines: point-to-point, soft endpoint, soft bundle mask.

All take fixed-shape halves (:class:`~difftract.learn.propagate.Paths`) and reference halves
(:class:`~difftract.learn.references.References`) with the same rows, and give scalars with
gradients to the points (hence to the direction field and whatever made it).

- **Point-to-point** (:func:`point_loss`): the mean distance (mm) between propagated and
  reference points at equal arc length from the shared seed. The alignment is robust to
  length: the shorter of the two halves is extended by its last point, so stopping early
  costs the distance from where it stopped to the reference points it did not reach, and
  running on costs the distance past the reference's end; each half is averaged over its
  own length before the halves are averaged, so long streamlines do not outweigh short
  ones. ``robust_mm`` replaces the distance ``d`` by the pseudo-Huber ``c (sqrt(1 + (d/c)^2) - 1)``.
- **Soft endpoint** (:func:`endpoint_loss`): distance (mm) of a streamline's two ends to its
  bundle's head and tail regions, in whichever pairing is closer (a soft minimum).
- **Soft bundle mask** (:func:`bundle_mask_loss`): the mean distance (mm) of the points to
  their bundle's mask (zero inside), plus optionally ``1 -`` a soft overlap (the fraction
  of the mask's voxels reached by a trilinear splat of the points).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..tracking.interpolate import corner_table
from .distance import DistanceMaps
from .propagate import Paths
from .references import References


def _sizes(voxel_sizes, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(voxel_sizes, dtype=like.dtype, device=like.device)


def _norm(v: torch.Tensor) -> torch.Tensor:
    """Euclidean norm over the last axis, with a zero (not NaN) gradient at zero."""
    sq = (v ** 2).sum(-1)
    nonzero = sq > 0
    return torch.where(nonzero, torch.sqrt(torch.where(nonzero, sq, torch.ones_like(sq))), torch.zeros_like(sq))


def _robust(d: torch.Tensor, c: float | None) -> torch.Tensor:
    return d if c is None else c * (torch.sqrt(1 + (d / c) ** 2) - 1)


def point_loss(paths: Paths, refs: References, voxel_sizes, robust_mm: float | None = None) -> torch.Tensor:
    """Mean point-to-point distance (mm) at equal arc length, length-robust (see the module docstring)."""
    T = min(paths.points.shape[1], refs.points.shape[1])
    diff = (paths.points[:, :T] - refs.points[:, :T]) * _sizes(voxel_sizes, paths.points)
    d = _robust(_norm(diff), robust_mm)
    n = torch.maximum(paths.length, refs.length.to(paths.length.device)).clamp(max=T)
    counted = (torch.arange(T, device=d.device) < n[:, None]) & (torch.arange(T, device=d.device) > 0)
    per = (d * counted).sum(1) / counted.sum(1).clamp(min=1)
    return per.mean()


def _softmin(a: torch.Tensor, b: torch.Tensor, tau: float | None) -> torch.Tensor:
    if tau is None:
        return torch.minimum(a, b)
    return -tau * torch.logsumexp(torch.stack([-a / tau, -b / tau]), 0)


def endpoint_loss(paths: Paths, rois: DistanceMaps, bundle: torch.Tensor, tau_mm: float | None = 1.0) -> torch.Tensor:
    """Mean distance (mm) of each streamline's two ends to its bundle's head and tail.

    ``rois`` holds ``2B`` maps: bundle ``b``'s head at channel ``2b``, its tail at ``2b + 1``.
    ``paths`` are both halves of ``S`` streamlines (:func:`propagate_both`), ``bundle (S,)``.
    """
    ends = paths.streamline_ends()                                    # (S, 2, 3)
    S = len(ends)
    dist = rois.sample(ends.reshape(-1, 3)).reshape(S, 2, -1)
    b = bundle.to(ends.device)
    rows = torch.arange(S, device=ends.device)
    head, tail = dist[rows, :, 2 * b], dist[rows, :, 2 * b + 1]       # (S, 2)
    return _softmin(head[:, 0] + tail[:, 1], tail[:, 0] + head[:, 1], tau_mm).mean() / 2


def soft_overlap(points: torch.Tensor, valid: torch.Tensor, mask: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Fraction of ``mask``'s voxels reached: ``1 - exp(-density / tau)`` averaged over the mask.

    ``density`` splats every valid point ``(N, 3)`` onto its 8 neighbouring voxels with its
    trilinear weights (so it moves smoothly with the points).
    """
    mask = mask.to(points.device)
    cells, weights, _ = corner_table(tuple(mask.shape), points)
    weights = weights * valid[:, None].to(weights.dtype)
    density = weights.new_zeros(mask.numel()).index_add(0, cells.reshape(-1), weights.reshape(-1))
    reached = 1 - torch.exp(-density / tau)
    m = mask.reshape(-1).to(reached.dtype)
    return (reached * m).sum() / m.sum().clamp(min=1)


def bundle_mask_loss(paths: Paths, outside: DistanceMaps, bundle: torch.Tensor, masks: torch.Tensor | None = None,
                     overlap_weight: float = 0.0, tau: float = 1.0) -> torch.Tensor:
    """Mean distance (mm) of the valid points to their bundle's mask, plus ``overlap_weight * (1 - soft overlap)``.

    ``outside`` holds one map per bundle (distance to the mask), ``bundle (S,)`` the bundle of
    each of the ``S`` streamlines whose two halves are ``paths``; ``masks (B, X, Y, Z)`` are
    needed for the overlap term.
    """
    b = torch.cat([bundle, bundle]).to(paths.points.device)
    S2, T = paths.points.shape[:2]
    dist = outside.sample(paths.points.reshape(-1, 3)).reshape(S2, T, -1)
    d = dist.gather(2, b[:, None, None].expand(S2, T, 1))[..., 0]
    valid = paths.valid
    loss = ((d * valid).sum(1) / valid.sum(1).clamp(min=1)).mean()
    if overlap_weight > 0:
        if masks is None:
            raise ValueError("the overlap term needs the bundle masks")
        terms = []
        for k in torch.unique(b).tolist():
            rows = b == k
            terms.append(1 - soft_overlap(paths.points[rows].reshape(-1, 3), valid[rows].reshape(-1), masks[k], tau))
        loss = loss + overlap_weight * torch.stack(terms).mean()
    return loss


@dataclass
class StreamlineLoss:
    """A weighted sum of the three losses; zero weights skip their term.

    Parameters
    ----------
    voxel_sizes : sequence of 3 float
    point_weight, endpoint_weight, mask_weight : float
    robust_mm : float, optional
        Pseudo-Huber scale of the point loss.
    rois : DistanceMaps, optional
        Heads and tails (channels ``2b``, ``2b + 1``), for the endpoint term.
    outside : DistanceMaps, optional
        Distance to each bundle's mask, for the mask term.
    masks : (B, X, Y, Z) tensor, optional
        Bundle masks, for the mask term's overlap part (``overlap_weight``).
    endpoint_tau_mm : float, optional
        Softness of the endpoint pairing (None: the hard minimum).
    """

    voxel_sizes: tuple
    point_weight: float = 1.0
    endpoint_weight: float = 0.0
    mask_weight: float = 0.0
    robust_mm: float | None = None
    rois: DistanceMaps | None = None
    outside: DistanceMaps | None = None
    masks: torch.Tensor | None = None
    overlap_weight: float = 0.0
    endpoint_tau_mm: float | None = 1.0

    def __post_init__(self):
        if min(self.point_weight, self.endpoint_weight, self.mask_weight, self.overlap_weight) < 0:
            raise ConfigError("loss weights must be non-negative")
        if self.endpoint_weight and self.rois is None:
            raise ConfigError("the endpoint term needs rois (head and tail distance maps)")
        if self.mask_weight and self.outside is None:
            raise ConfigError("the mask term needs outside (distance maps to the bundle masks)")
        if self.mask_weight and self.overlap_weight and self.masks is None:
            raise ConfigError("the overlap term needs the bundle masks")

    def __call__(self, paths: Paths, refs: References) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss and its parts (floats, for logging)."""
        total, parts = paths.points.new_zeros(()), {}
        if self.point_weight:
            value = point_loss(paths, refs, self.voxel_sizes, self.robust_mm)
            total, parts["point_mm"] = total + self.point_weight * value, float(value.detach())
        if self.endpoint_weight:
            value = endpoint_loss(paths, self.rois, refs.bundle, self.endpoint_tau_mm)
            total, parts["endpoint_mm"] = total + self.endpoint_weight * value, float(value.detach())
        if self.mask_weight:
            value = bundle_mask_loss(paths, self.outside, refs.bundle, self.masks, self.overlap_weight)
            total, parts["mask"] = total + self.mask_weight * value, float(value.detach())
        return total, parts
