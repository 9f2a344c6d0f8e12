"""Streamline tracking in torch: batched over seeds, DIPY's rules.

``Tracker(getter, criterion, voxel_sizes, TrackingParams(...)).track(seeds)`` yields chunks
of streamlines (voxel coordinates). Getters (:mod:`.getters`, the :class:`Getter` protocol)
choose directions, criteria (:mod:`.stopping`, the :class:`Criterion` protocol) stop
streamlines, :mod:`.seeding` makes seeds. Gradients through tracking come from
:func:`difftract.learn.propagate`, which takes the same steps.
"""

from .getter_protocol import Getter, StatelessGetter
from .getters import (METHODS, ClosestPeakGetter, DeterministicGetter, PeakGetter, ProbabilisticGetter,
                      make_getter)
from .seeding import grid_seeds, random_seeds
from .sh_field import SHField
from .stopping import (ENDPOINT, INVALIDPOINT, OUTSIDEIMAGE, TRACKPOINT, BinaryCriterion, Criterion,
                       ThresholdCriterion)
from .tracker import Streamlines, Tracker, TrackingParams

__all__ = ["Getter", "StatelessGetter", "Criterion", "METHODS", "ClosestPeakGetter", "DeterministicGetter",
           "PeakGetter", "ProbabilisticGetter", "make_getter", "grid_seeds", "random_seeds", "SHField", "ENDPOINT",
           "INVALIDPOINT", "OUTSIDEIMAGE", "TRACKPOINT", "BinaryCriterion", "ThresholdCriterion", "Streamlines",
           "Tracker", "TrackingParams"]
