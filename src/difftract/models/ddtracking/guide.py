"""The fODF guide: DDTracking's direction moved part of the way to the CSD fODF peak it points at.

At each step the network's direction carries two things. One is which bundle the streamline
is in and how to stay in it: its GRU has seen the streamline so far, and it was trained to
steer back towards the bundle after a drift (the jittered windows of :mod:`.data`). The
other is the local fibre orientation, which it reads from a 3x3x3 SH neighbourhood through
a few learned layers, and which a CSD fODF's peaks measure more directly. The guide keeps
the first and takes the second from the fODF:

    d = normalize((1 - w) d_net + w p)

where ``p`` is the fODF peak at the point whose basin holds ``d_net`` (with ``d_net``'s
sign), used when it lies within ``max_angle`` of ``d_net``; elsewhere ``d = d_net``. It is
found by climbing the pmf on the sphere from ``d_net``
(:meth:`~difftract.tracking.sh_field.SHField.climbed_peak`), and it is a peak as the
``closest`` rule's are: a local maximum of the thresholded pmf at least half the largest.
The climb compares a few vertices where the ``closest`` rule's search
(:meth:`~difftract.tracking.sh_field.SHField.peaks`) compares all 362 and sorts the maxima:
guided, the ``fast`` network tracks 5-10% fewer streamlines per second than alone, against
23-25% with the search. The two give the same peak at 99.5% of points (they differ where
``d_net`` lies in one peak's basin but nearer another, and where a small maximum near a
larger one, which the search merges, holds it); where the climb finds no peak within
``max_angle``, the search finds one at 0.06-0.11% of tracking steps (four test phantoms),
not worth its cost. The validation means of either are equal to within 0.003.

The network still chooses the peak, so a crossing is crossed where its memory says. The
moved direction is the move the streamline makes, so it is also the previous move the GRU
reads at the next step, as in training. Seeds still start along the signal's principal
direction (the getter's rule): the first step is the network's, guided like the others.

``w = 1`` is peak tracking whose choice among the peaks is the network's. It loses the
steering back: the streamlines drift out of their bundle's side (on three test phantoms
probed first, NC rose by 0.04-0.17). The weight is chosen per network on validation
phantoms, not the test ones (``benchmarks/tune_fodf_guide.py``): 0.3 for ``full`` and 0.7
for ``fast``, the default of ``track`` and ``run``
(:data:`~difftract.models.ddtracking.defaults.VALIDATED_GUIDES`; README, "Learned
tracking", for the figures).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ...errors import ConfigError
from ...tracking.sh_field import SHField

DEFAULT_ANGLE = 30.0


@dataclass(frozen=True)
class GuideConfig:
    """How strongly the fODF guides DDTracking.

    Attributes
    ----------
    weight : float
        ``w`` in [0, 1]: 0 is the network alone, 1 snaps to the peak.
    max_angle : float
        The largest angle, degrees, between the network's direction and the peak it is moved to.
    relative_peak_threshold : float
        Peaks smaller than this fraction of the largest are not peaks.
    """

    weight: float
    max_angle: float = DEFAULT_ANGLE
    relative_peak_threshold: float = 0.5

    def __post_init__(self):
        if not 0.0 <= self.weight <= 1.0:          # NaN fails too
            raise ConfigError(f"--fodf-guide must be in [0, 1], got {self.weight}")
        if not 0.0 < self.max_angle <= 90.0:
            raise ConfigError(f"the guide's angle must be in (0, 90] degrees, got {self.max_angle}")
        if not 0.0 <= self.relative_peak_threshold < 1.0:
            raise ConfigError(f"the guide's relative peak threshold must be in [0, 1), got "
                              f"{self.relative_peak_threshold}")

    def record(self) -> dict:
        """What a sidecar says of it."""
        return {"fodf_guide": self.weight, "fodf_guide_angle": self.max_angle,
                "fodf_guide_peak_threshold": self.relative_peak_threshold}


class FodfGuide:
    """Moves directions towards the peak of an fODF field that each points at.

    Parameters
    ----------
    field : SHField
        The CSD fODF, as ``det`` reads it (its ``pmf_threshold`` applies).
    config : GuideConfig
    """

    def __init__(self, field: SHField, config: GuideConfig):
        self.field, self.config = field, config
        self.cos_max = math.cos(math.radians(config.max_angle))

    def to(self, device, dtype) -> FodfGuide:
        return FodfGuide(self.field.to(device, dtype), self.config)

    def __call__(self, points: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
        """``dirs (N, 3)`` (unit, physical, along the array axes) moved towards the fODF peak whose basin holds
        each, at ``points (N, 3)``; unchanged where that is no peak or lies beyond ``max_angle``."""
        peak, cos = self.field.climbed_peak(points, dirs, self.config.relative_peak_threshold)
        w = self.config.weight
        moved = F.normalize((1.0 - w) * dirs + w * peak, dim=-1)
        return torch.where((cos >= self.cos_max)[:, None], moved, dirs)      # cos is -1 where there is no peak

    def bytes_per_seed(self, dtype_bytes: int) -> int:
        """One pmf query per step (as the ``closest`` rule's)."""
        return self.field.bytes_per_query(dtype_bytes)
