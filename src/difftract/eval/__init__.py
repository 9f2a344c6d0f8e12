"""Evaluation: the Tractometer, bundle overlap and tensor-metric errors.

- :mod:`.tractometer`   VS/IC/NC, VB, OL/OR/F1 as scilpy 2.3.0 scores them (``--compute_ic --unique``)
- :mod:`.overlap`       density and binary maps, Dice, weighted Dice, tract detection rate
- :mod:`.tensor_errors` tensor, FA, MD, AD, RD errors and principal-direction angles
- :mod:`.traversal`     which voxels streamlines traverse (the Tractometer's rule) and endpoint lookup
"""

from .overlap import compare_bundles, density_map, dice, tract_detection_rate, weighted_dice
from .tensor_errors import TensorErrors, tensor_errors
from .tractometer import TractometerResult, format_table, load_scoring, score
from .traversal import endpoint_voxels, streamline_voxels, traversed_voxels

__all__ = ["load_scoring", "score", "format_table", "TractometerResult", "density_map", "dice", "weighted_dice",
           "tract_detection_rate", "compare_bundles", "tensor_errors", "TensorErrors", "endpoint_voxels",
           "streamline_voxels", "traversed_voxels"]
