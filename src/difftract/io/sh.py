"""Reading an SH volume made elsewhere (an fODF from difftract, DIPY, scilpy): its grid and its basis.

difftract writes descoteaux07 SH with ``sh_basis`` in the JSON sidecar; DIPY and scilpy
default to the legacy variant. Which one a file holds cannot be told from the numbers, so
it comes from the sidecar or from the user (``--sh-basis``), never from a guess.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import InputError
from .nifti import load_nifti
from .sidecar import sidecar_path

BASES = ("descoteaux07", "descoteaux07_legacy")


def sh_basis_of(path: Path, given: str | None) -> bool:
    """Whether the SH file uses the legacy basis: from ``given`` or from the file's sidecar."""
    if given is not None:
        return given == "descoteaux07_legacy"
    sidecar = sidecar_path(path)
    try:
        basis = json.loads(sidecar.read_text()).get("sh_basis")
    except (OSError, ValueError):
        basis = None
    if basis not in BASES:
        raise InputError(path, f"cannot tell its SH basis (no 'sh_basis' in {sidecar.name}): give --sh-basis "
                               "descoteaux07 (difftract's default) or descoteaux07_legacy (DIPY's and scilpy's)")
    return basis == "descoteaux07_legacy"


def load_sh(path: Path, dwi) -> np.ndarray:
    """An SH volume ``(X, Y, Z, m)`` float32 (e.g. an fODF for tracking), checked to be on the scan's grid."""
    img = load_nifti(path, "fODF SH", dtype=np.float32)
    if img.ndim != 4 or img.shape[:3] != dwi.shape:
        raise InputError(path, f"fODF SH must be (X, Y, Z, n_coeffs) on the DWI grid {dwi.shape}, got {img.shape}")
    if not np.allclose(img.affine, dwi.affine, atol=1e-3):
        raise InputError(path, "fODF SH affine differs from the DWI affine")
    return np.asarray(img.dataobj)
