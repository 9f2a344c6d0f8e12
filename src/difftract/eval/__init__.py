"""Evaluation: voxel traversal of streamlines (more scorers come with the evaluation issue)."""

from .traversal import endpoint_voxels, traversed_voxels

__all__ = ["endpoint_voxels", "traversed_voxels"]
