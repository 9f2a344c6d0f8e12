"""NIfTI reading with clear errors, and atomic NIfTI writing with a sidecar."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ..errors import ConfigError, InputError
from .atomic import atomic_file, check_output
from .sidecar import sidecar_path, write_sidecar


def open_nifti(path: str | Path, what: str = "image", keep_file_open: bool = False) -> nib.Nifti1Image:
    """Open a NIfTI file and check its container and header, without reading the voxel data.

    Every low-level failure becomes an :class:`InputError`; complex data are refused and an
    uncompressed file shorter than its header promises is refused before anything is read.
    ``keep_file_open`` keeps one handle for the image's life, so that reading a ``.nii.gz``
    volume after volume (:func:`iter_volumes`) is one forward pass through the gzip stream.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, f"{what} file not found")
    if path.is_dir():
        raise InputError(path, f"{what} path is a directory, expected a NIfTI file; give the image file itself")
    _check_container(path, what)
    try:
        img = nib.load(str(path), keep_file_open=keep_file_open)
    except Exception as exc:  # nibabel raises many types for bad headers
        detail = str(exc)
        for quoted in (f'"{path}"', f"'{path}'", str(path)):   # the path is at the front of the message already
            detail = detail.replace(quoted, "the file")
        raise InputError(path, f"cannot read {what} as NIfTI ({type(exc).__name__}: {detail}); check it is a NIfTI "
                               "image (.nii or .nii.gz), e.g. convert DICOMs with dcm2niix") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(path, f"{what} is a {type(img).__name__}, expected NIfTI-1 or NIfTI-2")
    if img.get_data_dtype().kind == "c":
        raise InputError(path, f"{what} holds complex values ({img.get_data_dtype()}); give magnitude images")
    _check_size(img, path, what)
    return img


def load_nifti(path: str | Path, what: str = "image", dtype: type | None = None) -> nib.Nifti1Image:
    """Open a NIfTI file, turning every low-level failure into an :class:`InputError`.

    The voxel data are read once here (as ``dtype`` when given, with the header's
    scaling applied), so a truncated or corrupt file fails now, with the file's name,
    rather than later inside a computation. Complex data are refused. (A DWI is read
    volume by volume instead, see :func:`iter_volumes`.)

    Parameters
    ----------
    path : str or Path
        The ``.nii`` or ``.nii.gz`` file.
    what : str
        What the file is meant to be ("DWI", "mask", ...), used in messages.
    dtype : numpy dtype, optional
        Read the data as this floating type (e.g. ``np.float32``) in one pass.
    """
    path = Path(path)
    img = open_nifti(path, what)
    with _reading(path, what):
        data = img.get_fdata(dtype=dtype) if dtype is not None else np.asanyarray(img.dataobj)
    return type(img)(data, img.affine, img.header)


def iter_volumes(img: nib.Nifti1Image, path: str | Path, what: str = "image", dtype: type = np.float32,
                 n_spatial: int = 3) -> Iterator[np.ndarray]:
    """The volumes of a 4D (or more) image in order, each ``(X, Y, Z)`` in ``dtype``, scaling applied.

    One volume is in memory at a time (plus nibabel's read buffer). Axes after the fourth
    must be singletons (index 0 is read). A truncated or corrupt file raises
    :class:`InputError` naming ``path`` at the volume where its data end.
    """
    path = Path(path)
    shape = img.shape
    tail = (0,) * (len(shape) - n_spatial - 1)
    for t in range(shape[n_spatial]):
        with _reading(path, what):
            volume = img.dataobj[(slice(None),) * n_spatial + (t,) + tail]
        yield np.array(volume, dtype=dtype)   # a writable copy, never a view of a memory map


@contextmanager
def _reading(path: Path, what: str) -> Iterator[None]:
    """Reading voxel data: a short or damaged file becomes an :class:`InputError` naming it."""
    try:
        yield
    except (EOFError, OSError, ValueError, zlib.error, gzip.BadGzipFile) as exc:
        raise InputError(path, f"{what} data are truncated or corrupt ({type(exc).__name__}: {exc}); the file is "
                               "incomplete: copy or convert it again") from None


GZIP_MAGIC = b"\x1f\x8b"
NIFTI_MAGICS = (b"n+1\x00", b"ni1\x00", b"n+2\x00", b"ni2\x00")


def _looks_like_nifti(head: bytes) -> bool:
    """NIfTI-1 keeps its magic at byte 344, NIfTI-2 at byte 4."""
    return head[344:348] in NIFTI_MAGICS or head[4:8] in NIFTI_MAGICS


def _check_container(path: Path, what: str) -> None:
    """Refuse, with a reason a user can act on, a file that is empty, or whose name and content disagree
    about gzip, or whose gzip stream ends inside the header."""
    try:
        with open(path, "rb") as f:
            head = f.read(540)
    except OSError as exc:
        raise InputError(path, f"cannot open {what} ({exc.strerror or exc})") from None
    if not head:
        raise InputError(path, f"{what} file is empty (0 bytes); copy or convert it again")
    gz = head[:2] == GZIP_MAGIC
    if path.name.endswith(".gz") and not gz:
        if _looks_like_nifti(head):
            raise InputError(path, f"{what} is named .gz but is an uncompressed NIfTI: rename it to .nii "
                                   "(or compress it with gzip)")
        raise InputError(path, f"{what} is named .gz but is not gzip-compressed, and not NIfTI either; "
                               "check the file (convert DICOMs with dcm2niix)")
    if gz and path.name.endswith(".nii"):
        raise InputError(path, f"{what} is gzip-compressed but named .nii: rename it to .nii.gz")
    if gz:
        try:
            with gzip.open(path, "rb") as f:
                head = f.read(540)
        except (EOFError, OSError, zlib.error) as exc:
            raise InputError(path, f"{what} is a truncated or damaged gzip file ({type(exc).__name__}: {exc}); the "
                                   "file is incomplete: copy or convert it again") from None
        if len(head) < 348:
            raise InputError(path, f"{what} is truncated or not NIfTI: its gzip stream ends after {len(head)} bytes, "
                                   "inside where the NIfTI header should be; copy or convert it again")


def _check_size(img: nib.Nifti1Image, path: Path, what: str) -> None:
    """Refuse an uncompressed file shorter than its header promises (before allocating)."""
    if path.name.endswith(".gz"):
        return
    expected = int(img.header["vox_offset"]) + int(np.prod(img.shape)) * img.get_data_dtype().itemsize
    size = path.stat().st_size
    if size < expected:
        raise InputError(path, f"{what} is truncated: the header promises {expected} bytes, the file has {size}")


def check_nifti_name(path: str | Path) -> Path:
    """``path`` as a Path when its name ends in ``.nii`` or ``.nii.gz``, else a ConfigError.

    nibabel picks the format from the extension: a name without one would be written
    elsewhere (or not at all) after the whole fit, so outputs are checked before any work.
    """
    path = Path(path)
    name = path.name.lower()        # nibabel reads the extension case-insensitively
    if not (name.endswith(".nii") or name.endswith(".nii.gz")) or name in (".nii", ".nii.gz"):
        raise ConfigError(f"{path}: a NIfTI output must be named *.nii or *.nii.gz")
    return path


def save_nifti(path: str | Path, data: np.ndarray, affine: np.ndarray, force: bool = False,
               sidecar: dict[str, Any] | None = None, header: nib.Nifti1Header | None = None) -> Path:
    """Write ``data`` with ``affine`` atomically, and its JSON sidecar when given.

    The qform and sform are both set to ``affine`` (code 1, scanner) so every reader
    agrees on the grid. Booleans are stored as uint8.
    """
    path = check_nifti_name(path)
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
