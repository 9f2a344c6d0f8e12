"""Tractography as a layer in learning: losses on streamlines and connectomes, with gradients.

The pieces, one per module:

- :mod:`.propagate`   a fixed-shape, differentiable propagator (Euler/RK2/RK4) with gradient
                      checkpointing and truncated backpropagation over steps;
- :mod:`.directions`  a tensor field's principal directions with a gradient that stays bounded
                      where eigenvalues meet;
- :mod:`.references`  reference streamlines cut at seeds into arc-length-aligned halves;
- :mod:`.distance`    distance-to-region maps sampled (trilinearly) at continuous points;
- :mod:`.losses`      point-to-point, soft endpoint and soft bundle-mask losses;
- :mod:`.connectome`  soft (Gaussian-kernel) endpoint-to-parcel assignment and the connectivity
                      matrix it implies;
- :mod:`.refine`      demonstration 1: refine a tensor field through the propagator;
- :mod:`.finetune`    demonstration 2: fine-tune QCG-DTI with a streamline loss.
"""

from .connectome import Parcellation, connectome, soft_assign
from .directions import principal_direction, tensor_peaks
from .distance import DistanceMaps
from .losses import StreamlineLoss, bundle_mask_loss, endpoint_loss, point_loss, soft_overlap
from .propagate import Paths, propagate, propagate_both
from .references import References, reference_halves

__all__ = ["Parcellation", "connectome", "soft_assign", "principal_direction", "tensor_peaks", "DistanceMaps",
           "StreamlineLoss", "bundle_mask_loss", "endpoint_loss", "point_loss", "soft_overlap", "Paths",
           "propagate", "propagate_both", "References", "reference_halves"]
