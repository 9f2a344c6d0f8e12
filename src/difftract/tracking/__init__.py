"""Streamline tracking in torch: batched over seeds, DIPY's rules, differentiable where it can be.

``Tracker(getter, criterion, voxel_sizes, TrackingParams(...)).track(seeds)`` yields chunks
of streamlines (voxel coordinates). Getters (:mod:`.getters`) choose directions, criteria
(:mod:`.stopping`) stop streamlines, :mod:`.seeding` makes seeds.
"""

from .getters import (METHODS, ClosestPeakGetter, DeterministicGetter, PeakGetter, ProbabilisticGetter,
                      make_getter)
from .seeding import grid_seeds, random_seeds
from .sh_field import SHField
from .stopping import ENDPOINT, INVALIDPOINT, OUTSIDEIMAGE, TRACKPOINT, BinaryCriterion, ThresholdCriterion
from .tracker import Streamlines, Tracker, TrackingParams

__all__ = ["METHODS", "ClosestPeakGetter", "DeterministicGetter", "PeakGetter", "ProbabilisticGetter",
           "make_getter", "grid_seeds", "random_seeds", "SHField", "ENDPOINT", "INVALIDPOINT", "OUTSIDEIMAGE",
           "TRACKPOINT", "BinaryCriterion", "ThresholdCriterion", "Streamlines", "Tracker", "TrackingParams"]
