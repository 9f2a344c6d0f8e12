"""Stopping criteria: where a streamline may go on, batched over points.

Each criterion maps points ``(N, 3)`` (voxel coordinates) to DIPY's status codes:
``TRACKPOINT`` (go on), ``ENDPOINT`` (stop here: the point is dropped, as DIPY does) or
``OUTSIDEIMAGE``. Angle and length limits are the tracker's, not a criterion's. Every
criterion satisfies :class:`Criterion`, ``margin`` included (soft stopping in
:func:`~difftract.learn.propagate` reads it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from ..errors import ConfigError
from .interpolate import grid_volume, nearest, trilinear

OUTSIDEIMAGE, INVALIDPOINT, TRACKPOINT, ENDPOINT = -1, 0, 1, 2


class Criterion(Protocol):
    """Where a streamline may go on (the tracker's and the propagator's seam)."""

    def status(self, points: torch.Tensor) -> torch.Tensor:
        """DIPY's status code of each point ``(N, 3)`` -> ``(N,)`` long."""
        ...

    def margin(self, points: torch.Tensor) -> torch.Tensor:
        """A smooth signed distance to stopping ``(N,)``: positive where tracking goes on (soft stopping)."""
        ...

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Criterion:
        """A copy on ``device`` (maps in ``dtype``)."""
        ...


def _volume(array, name: str) -> torch.Tensor:
    t = grid_volume(array)
    if t.dim() != 3:
        raise ConfigError(f"the {name} must be a 3D volume, got shape {tuple(t.shape)}")
    return t


@dataclass
class BinaryCriterion:
    """Go on while the nearest voxel (rounded coordinates) is in the mask (DIPY's BinaryStoppingCriterion)."""

    mask: torch.Tensor

    def __post_init__(self):
        self.mask = _volume(self.mask, "mask") > 0

    def to(self, device, dtype: torch.dtype | None = None) -> BinaryCriterion:
        return BinaryCriterion(self.mask.to(device))

    def margin(self, points: torch.Tensor) -> torch.Tensor:
        """The trilinear mask value minus 0.5: positive well inside, negative outside (soft stopping)."""
        value, _ = trilinear(self.mask.to(points.dtype), points)
        return value - 0.5

    def status(self, points: torch.Tensor) -> torch.Tensor:
        value, inside = nearest(self.mask.to(points.device), points)
        code = torch.where(value, TRACKPOINT, ENDPOINT)
        return torch.where(inside, code, OUTSIDEIMAGE)


@dataclass
class ThresholdCriterion:
    """Go on while the trilinear value of a map (FA, GFA) exceeds ``threshold`` (DIPY's ThresholdStoppingCriterion)."""

    metric: torch.Tensor
    threshold: float

    def __post_init__(self):
        self.metric = _volume(self.metric, "metric map")
        if not np.isfinite(self.threshold):
            raise ConfigError(f"the stopping threshold must be finite, got {self.threshold}")

    def to(self, device, dtype: torch.dtype | None = None) -> ThresholdCriterion:
        return ThresholdCriterion(self.metric.to(device=device, dtype=dtype or self.metric.dtype), self.threshold)

    def margin(self, points: torch.Tensor) -> torch.Tensor:
        """The trilinear value minus the threshold (soft stopping)."""
        value, _ = trilinear(self.metric.to(points.dtype), points)
        return value - self.threshold

    def status(self, points: torch.Tensor) -> torch.Tensor:
        value, inside = trilinear(self.metric.to(device=points.device, dtype=points.dtype), points)
        code = torch.where(value > self.threshold, TRACKPOINT, ENDPOINT)
        return torch.where(inside, code, OUTSIDEIMAGE)
