"""NIfTI reading with clear errors, and atomic NIfTI writing with a sidecar."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ..errors import InputError
from .atomic import atomic_file, check_output
from .sidecar import sidecar_path, write_sidecar


def load_nifti(path: str | Path, what: str = "image") -> nib.Nifti1Image:
    """Open a NIfTI file, turning every low-level failure into an :class:`InputError`.

    The voxel data are read once here, so a truncated or corrupt file fails now, with
    the file's name, rather than later inside a computation.

    Parameters
    ----------
    path : str or Path
        The ``.nii`` or ``.nii.gz`` file.
    what : str
        What the file is meant to be ("DWI", "mask", ...), used in messages.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, f"{what} file not found")
    if path.is_dir():
        raise InputError(path, f"{what} path is a directory, expected a NIfTI file")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for bad headers
        raise InputError(path, f"cannot read {what} as NIfTI ({type(exc).__name__}: {exc})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(path, f"{what} is a {type(img).__name__}, expected NIfTI-1 or NIfTI-2")
    try:
        data = np.asanyarray(img.dataobj)
    except (EOFError, OSError, ValueError, zlib.error, gzip.BadGzipFile) as exc:
        raise InputError(path, f"{what} data are truncated or corrupt ({type(exc).__name__}: {exc})") from None
    return nib.Nifti1Image(data, img.affine, img.header) if isinstance(img, nib.Nifti1Image) \
        else nib.Nifti2Image(data, img.affine, img.header)


def save_nifti(path: str | Path, data: np.ndarray, affine: np.ndarray, force: bool = False,
               sidecar: dict[str, Any] | None = None, header: nib.Nifti1Header | None = None) -> Path:
    """Write ``data`` with ``affine`` atomically, and its JSON sidecar when given.

    The qform and sform are both set to ``affine`` (code 1, scanner) so every reader
    agrees on the grid. Booleans are stored as uint8.
    """
    path = Path(path)
    data = np.asarray(data)
    if data.dtype == bool:
        data = data.astype(np.uint8)
    img = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64), header)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    if sidecar is not None:  # refuse early, before anything is written
        check_output(sidecar_path(path), force)
    with atomic_file(path, force=force) as tmp:
        nib.save(img, str(tmp))
    if sidecar is not None:
        write_sidecar(path, sidecar, force=force)
    return path
