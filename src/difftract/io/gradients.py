"""FSL ``.bval``/``.bvec`` files: reading with validation, writing, and frames.

FSL's bvecs are expressed in the image axes, except that the x component is flipped
when the affine's determinant is positive (FSL assumes a radiological, negative
determinant, voxel order). MRtrix's ``-fslgrad`` reads them the same way. difftract
keeps gradients in the frame of the data array (what DIPY's models assume), so the
flip is undone on reading and redone on writing.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from ..errors import DifftractWarning, InputError
from .atomic import atomic_file, check_output

log = logging.getLogger("difftract")

B0_THRESHOLD = 50.0
UNIT_TOL = 1e-3
SI_BVAL = 1e5       # no diffusion scan reaches b = 100,000 s/mm^2: larger values are in s/m^2 (x 1e6)


def _read_numbers(path: Path, what: str, allow_nan: bool = False) -> np.ndarray:
    if not path.exists():
        raise InputError(path, f"{what} file not found")
    if path.is_dir():
        raise InputError(path, f"{what} path is a directory, expected a text file; give the file itself")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read {what} as text ({exc})") from None
    rows = [line.replace(",", " ").split() for line in text.splitlines() if line.strip()]
    if not rows:
        raise InputError(path, f"{what} file is empty")
    if len({len(r) for r in rows}) != 1:
        raise InputError(path, f"{what} rows have different lengths {sorted({len(r) for r in rows})}")
    try:
        values = np.array(rows, dtype=np.float64)
    except ValueError:
        bad = next(tok for r in rows for tok in r if not _is_number(tok))
        raise InputError(path, f"{what} contains a non-numeric value {bad!r}") from None
    bad = np.isinf(values) if allow_nan else ~np.isfinite(values)
    if bad.any():
        kind = "Inf" if allow_nan else "NaN or Inf"
        raise InputError(path, f"{what} contains {kind} ({int(bad.sum())} value(s)); fix the file "
                               "(every entry must be a finite number)")
    return values


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def read_bvals(path: str | Path) -> np.ndarray:
    """Read an FSL ``.bval`` file (one row or one column) as a float64 vector in s/mm^2."""
    path = Path(path)
    values = _read_numbers(path, "bval")
    if values.ndim == 2 and min(values.shape) != 1:
        raise InputError(path, f"bval must be a single row or column, found {values.shape[0]}x{values.shape[1]}")
    bvals = values.ravel()
    if np.any(bvals < 0):
        raise InputError(path, f"bval has {int(np.sum(bvals < 0))} negative value(s) (first at volume "
                               f"{int(np.argmax(bvals < 0))}); b-values are >= 0 s/mm^2")
    if bvals.max() > SI_BVAL:
        raise InputError(path, f"b-values look like s/m^2 (largest {bvals.max():.4g}); FSL's .bval is in s/mm^2: "
                               "divide them by 1e6")
    return bvals


def read_bvecs(path: str | Path, n_volumes: int | None = None, bvals: np.ndarray | None = None,
               b0_threshold: float = B0_THRESHOLD) -> np.ndarray:
    """Read an FSL ``.bvec`` file as an (N, 3) array, in the file's (FSL) frame.

    FSL's layout is 3 rows by N columns. An N x 3 file is accepted with a note. With
    ``n_volumes`` the count is checked against the image. NaN entries are accepted only
    on b0 volumes (``bvals`` given, ``b <= b0_threshold``), where converters write
    ``nan nan nan`` and the direction means nothing: they are set to 0 with a note.
    """
    path = Path(path)
    values = _read_numbers(path, "bvec", allow_nan=True)
    if values.shape[0] == 3:
        bvecs = values.T
    elif values.shape[1] == 3:
        log.info("%s: bvec is N x 3 (%d rows); FSL's layout is 3 x N, reading it transposed", path, values.shape[0])
        bvecs = values
    else:
        raise InputError(path, f"bvec must have 3 rows (FSL layout 3 x N), found {values.shape[0]} x "
                               f"{values.shape[1]}; give one x, y, z direction per volume")
    if n_volumes is not None and bvecs.shape[0] != n_volumes:
        raise InputError(path, f"bvec has {bvecs.shape[0]} directions but the DWI has {n_volumes} volumes; "
                               "give the gradient files that belong to this DWI")
    bvecs = np.array(bvecs, dtype=np.float64)
    nan = np.isnan(bvecs).any(axis=1)
    if nan.any():
        if bvals is None or len(bvals) != len(bvecs):
            raise InputError(path, f"bvec contains NaN ({int(nan.sum())} direction(s), first at volume "
                                   f"{int(np.argmax(nan))})")
        dw_nan = nan & (np.asarray(bvals) > b0_threshold)
        if dw_nan.any():
            first = int(np.argmax(dw_nan))
            raise InputError(path, f"bvec has NaN on {int(dw_nan.sum())} diffusion-weighted volume(s) (first: volume "
                                   f"{first}, b = {bvals[first]:g}); only b0 volumes may have an undefined "
                                   "direction: fix the gradient table")
        bvecs[nan] = 0.0
        log.info("%s: %d b0 volume(s) have a NaN direction (as some converters write); set to 0", path, int(nan.sum()))
    return np.ascontiguousarray(bvecs)


def normalize_bvecs(bvecs: np.ndarray, bvals: np.ndarray, path: str | Path,
                    b0_threshold: float = B0_THRESHOLD) -> np.ndarray:
    """Scale the directions of diffusion-weighted volumes to unit length.

    A DW volume with a zero direction is an error; non-unit ones are normalised with a
    warning. Directions of b0 volumes are kept as they are.
    """
    bvecs = np.array(bvecs, dtype=np.float64)
    dw = bvals > b0_threshold
    norms = np.linalg.norm(bvecs, axis=1)
    zero = dw & (norms < 1e-6)
    if zero.any():
        first = int(np.argmax(zero))
        raise InputError(path, f"{int(zero.sum())} diffusion-weighted volume(s) have a zero gradient direction "
                               f"(first at volume {first}, b = {bvals[first]:g}); give its direction, or its "
                               f"b-value as <= {b0_threshold:g} if it is a b0")
    off = dw & (np.abs(norms - 1.0) > UNIT_TOL)
    if off.any():
        warnings.warn(f"{path}: normalised {int(off.sum())} non-unit gradient direction(s) of DW volumes "
                      f"(norms {norms[off].min():.3g}..{norms[off].max():.3g}); the b-values are used as given, "
                      "not scaled by the squared norm", DifftractWarning, stacklevel=3)
    bvecs[dw] /= norms[dw, None]
    return bvecs


def read_gradients(bval: str | Path, bvec: str | Path, n_volumes: int | None = None,
                   b0_threshold: float = B0_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate an FSL bval/bvec pair, in the files' (FSL) frame.

    Checks the counts (against ``n_volumes`` when given), that at least one b0 exists,
    and normalises the directions of DW volumes. Returns ``(bvals, bvecs (N, 3))``.
    """
    bvals = read_bvals(bval)
    n = bvals.size if n_volumes is None else n_volumes
    if bvals.size != n:
        raise InputError(bval, f"bval has {bvals.size} values but the DWI has {n} volumes; give the gradient "
                               "files that belong to this DWI")
    bvecs = read_bvecs(bvec, n, bvals, b0_threshold)
    if not np.any(bvals <= b0_threshold):
        raise InputError(bval, f"no b0 volume (b <= {b0_threshold:g}); smallest b-value is {bvals.min():g}: "
                               "difftract normalises by the b0 signal, so add the scan's b0 volume(s)")
    if not np.any(bvals > b0_threshold):
        hint = (" (if the b-values are in ms/um^2, multiply them by 1000)" if bvals.max() > 0 else "")
        raise InputError(bval, f"no diffusion-weighted volume: every b-value is <= {b0_threshold:g}{hint}")
    return bvals, normalize_bvecs(bvecs, bvals, bvec, b0_threshold)


def flip_for_fsl(bvecs: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Convert between FSL's bvec frame and the data-array frame (the map is its own inverse)."""
    bvecs = np.array(bvecs, dtype=np.float64, copy=True)
    if np.linalg.det(np.asarray(affine)[:3, :3]) > 0:
        bvecs[:, 0] = -bvecs[:, 0]
    return bvecs


def write_bvals_bvecs(bval_path: str | Path, bvec_path: str | Path, bvals: np.ndarray,
                      bvecs: np.ndarray, affine: np.ndarray, force: bool = False) -> None:
    """Write FSL files from gradients in the data-array frame (x flipped when det > 0)."""
    check_output(bval_path, force)
    check_output(bvec_path, force)
    fsl = flip_for_fsl(bvecs, affine) + 0.0  # + 0.0 turns -0.0 into 0.0
    with atomic_file(bval_path, force=force) as tmp:
        tmp.write_text(" ".join(f"{b:g}" for b in np.asarray(bvals)) + "\n")
    with atomic_file(bvec_path, force=force) as tmp:
        tmp.write_text("\n".join(" ".join(f"{v:.8f}" for v in row) for row in fsl.T) + "\n")
