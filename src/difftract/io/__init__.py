"""Inputs and outputs: validated DWI loading, gradients, NIfTI, tractograms, sidecars."""

from .atomic import atomic_directory, atomic_file, check_output
from .dwi import DWI, load_dwi, load_mask, load_subject
from .gradients import read_bvals, read_bvecs, write_bvals_bvecs
from .nifti import load_nifti, save_nifti
from .sidecar import provenance, sidecar_path, write_json, write_sidecar

__all__ = [
    "DWI", "load_dwi", "load_mask", "load_subject",
    "read_bvals", "read_bvecs", "write_bvals_bvecs",
    "load_nifti", "save_nifti",
    "atomic_file", "atomic_directory", "check_output",
    "provenance", "sidecar_path", "write_json", "write_sidecar",
]
