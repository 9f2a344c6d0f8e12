"""Loading a diffusion scan: 4D NIfTI + FSL gradients + brain mask, validated once.

:func:`load_dwi` is the one door into difftract for real data. It checks everything a
later step would trip over and says which file is wrong and how, so that fitting and
tracking can assume clean inputs.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from dipy.core.gradients import GradientTable, gradient_table

from ..errors import DifftractWarning, InputError
from ..reconst.voxels import MaskedSignal
from .gradients import B0_THRESHOLD, flip_for_fsl, read_gradients
from .nifti import iter_volumes, load_nifti, open_nifti

log = logging.getLogger("difftract")

GRID_ATOL_MM = 1e-3
ANISOTROPY_NOTE = 1.01   # voxel edges differing by more than 1 % get a note


@dataclass
class DWI:
    """A diffusion-weighted scan in memory.

    Attributes
    ----------
    signal : MaskedSignal or ndarray (X, Y, Z, N)
        What the fits read. :func:`load_dwi` holds only the voxels of the mask (all
        voxels without a mask) as a float32 :class:`~difftract.reconst.voxels.MaskedSignal`;
        a DWI built from an array (a phantom) holds that array. Every model's ``fit``
        takes either.
    affine : ndarray, (4, 4)
        Voxel (centre) to RAS mm.
    gtab : dipy GradientTable
        b-values and unit directions in the frame of the data array.
    mask : ndarray of bool, (X, Y, Z), or None
        The brain mask.
    files : dict
        Where each part came from (``dwi``, ``bval``, ``bvec``, ``mask``).
    value_range : (float, float) or None
        Smallest and largest value of the whole image as read (background included);
        None: taken from the data when asked (:attr:`data_range`).
    """

    signal: np.ndarray | MaskedSignal
    affine: np.ndarray
    gtab: GradientTable
    mask: np.ndarray | None = None
    files: dict[str, Path] = field(default_factory=dict)
    value_range: tuple[float, float] | None = None

    @cached_property
    def data(self) -> np.ndarray:
        """The 4D ``(X, Y, Z, N)`` float32 signal, built on first use and kept.

        From a loaded scan it is zero outside the mask (only the mask's voxels are
        read into memory); without a mask it is a view of the held rows, not a copy.
        Whole-brain code should read :attr:`signal` instead: this array is the full grid.
        """
        return self.signal.volume() if isinstance(self.signal, MaskedSignal) else self.signal

    @property
    def data_range(self) -> tuple[float, float]:
        """(min, max) of the image's values (all voxels, as read)."""
        if self.value_range is None:
            self.value_range = (float(np.min(self.data)), float(np.max(self.data)))
        return self.value_range

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.signal.shape[:3])

    @property
    def n_volumes(self) -> int:
        return int(self.signal.shape[3])

    @property
    def voxel_sizes(self) -> np.ndarray:
        """Voxel edge lengths in mm (the column norms of the affine)."""
        return np.sqrt(np.sum(self.affine[:3, :3] ** 2, axis=0))

    @property
    def bvals(self) -> np.ndarray:
        return self.gtab.bvals

    @property
    def bvecs(self) -> np.ndarray:
        return self.gtab.bvecs

    def __repr__(self) -> str:
        from ..reconst.sh import shell_groups   # reconst imports io: not at module level

        nb0 = int(self.gtab.b0s_mask.sum())
        shells = [f"{g.describe()}: {len(g.indices)}" for g in shell_groups(self.bvals)]
        nmask = "no mask" if self.mask is None else f"mask {int(self.mask.sum())} voxels"
        return (f"DWI(shape={self.shape}, volumes={self.n_volumes}, b0={nb0}, "
                f"shells (volumes)=[{', '.join(shells)}], "
                f"voxel_sizes={np.round(self.voxel_sizes, 3).tolist()}, {nmask})")


def load_dwi(dwi: str | Path, bval: str | Path, bvec: str | Path, mask: str | Path | None = None, *,
             zero_nonfinite: bool = False, b0_threshold: float = B0_THRESHOLD) -> DWI:
    """Load and validate a DWI, its FSL gradient files and an optional brain mask.

    The image is read volume by volume (one forward pass through a ``.nii.gz``) and only
    the voxels of the mask are kept, as a ``(V, N)`` float32 matrix: a whole-brain scan
    takes the memory of its brain, not of its grid. Every volume is still read and
    checked, so a truncated file fails here with its name.

    Parameters
    ----------
    dwi : path
        4D NIfTI, volumes last.
    bval, bvec : path
        FSL gradient files (bvec 3 x N; N x 3 is accepted with a note).
    mask : path, optional
        3D brain mask on the same grid; voxels > 0 are inside. Without one every voxel
        is kept.
    zero_nonfinite : bool
        Replace NaN/Inf in the data by 0 (with a warning) instead of refusing them.
    b0_threshold : float
        Volumes with b <= this are b0s.

    Returns
    -------
    DWI
        The signal of the mask's voxels (:attr:`DWI.signal`; :attr:`DWI.data` gives the
        4D array), the affine, a DIPY gradient table in the data-array frame (FSL's x
        flip undone for positive-determinant affines) and the mask.
    """
    dwi, bval, bvec = Path(dwi), Path(bval), Path(bvec)
    img = open_nifti(dwi, "DWI", keep_file_open=True)
    shape = check_dims(img.shape, dwi)
    affine = check_affine(img.affine, dwi)
    n_volumes = shape[3]

    bvals, bvecs = read_gradients(bval, bvec, n_volumes, b0_threshold)
    bvecs = flip_for_fsl(bvecs, affine)
    gtab = gradient_table(bvals, bvecs=bvecs, b0_threshold=b0_threshold)

    files = {"dwi": dwi, "bval": bval, "bvec": bvec}
    mask_array = None
    if mask is not None:
        mask_array = load_mask(mask, reference_shape=shape[:3], reference_affine=affine)
        files["mask"] = Path(mask)
    held = np.ones(shape[:3], dtype=bool) if mask_array is None else mask_array
    rows, value_range = _read_rows(img, dwi, held, bvals <= b0_threshold, zero_nonfinite)
    _note_grid(shape[:3], affine, dwi)
    return DWI(signal=MaskedSignal(rows, held), affine=affine, gtab=gtab, mask=mask_array, files=files,
               value_range=value_range)


def load_mask(path: str | Path, reference_shape: tuple[int, ...] | None = None,
              reference_affine: np.ndarray | None = None, what: str = "brain mask") -> np.ndarray:
    """Load a binary mask (voxels > 0), checking it is 3D, on the grid given, and not empty.

    ``what`` ("brain mask", "stop mask", "seed mask") says in the refusal of an empty mask
    what the mask should have held.
    """
    path = Path(path)
    img = load_nifti(path, "mask")
    data = np.asarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(path, f"mask must be 3D, found {data.ndim}D shape {data.shape}; give one 3D brain mask")
    resample = ("resample it onto the DWI grid (e.g. mrgrid MASK regrid -template DWI -interp nearest OUT), or "
                "make the mask from this DWI")
    if reference_shape is not None and tuple(data.shape) != tuple(reference_shape):
        raise InputError(path, f"mask shape {tuple(data.shape)} differs from the DWI grid {tuple(reference_shape)}; "
                               + resample)
    if reference_affine is not None and not np.allclose(img.affine, reference_affine, atol=GRID_ATOL_MM):
        diff = np.abs(img.affine - reference_affine).max()
        raise InputError(path, f"mask affine differs from the DWI affine (largest difference {diff:.3g} mm), so "
                               f"its voxels are not the DWI's; {resample}")
    if not np.all(np.isfinite(data)):
        raise InputError(path, f"mask contains {int(np.sum(~np.isfinite(data)))} NaN/Inf value(s); give a binary "
                               "mask (0 outside, 1 inside)")
    values = np.unique(data)
    out = data > 0
    if not out.any():
        if what == "brain mask":
            raise InputError(path, "mask is empty (no voxel > 0); give a brain mask with the brain set to 1 "
                                   "(e.g. from bet or dwi2mask)")
        raise InputError(path, f"{what} is empty (no voxel > 0); give a {what} with the region to track (e.g. the "
                               "white matter) set to 1")
    if not np.all(np.isin(values, (0, 1))):
        _note_nonbinary(data, values, out, path)
    return out


def _note_nonbinary(data: np.ndarray, values: np.ndarray, inside: np.ndarray, path: Path) -> None:
    """Say how a non-binary mask is read (voxels > 0, as FSL, MRtrix and DIPY read masks), loudly when
    it looks like a probability map: there ``> 0`` takes in every voxel with any probability at all."""
    fractional = (data > 0) & (data < 1)
    if fractional.any():
        n_low = int(np.sum((data > 0) & (data < 0.5)))
        log.warning("%s: mask is not binary but has values between 0 and 1 (a probability map?); every voxel > 0 "
                    "is used (%d voxels, %d of them below 0.5); if that is not what you want, binarise it first "
                    "(e.g. fslmaths M -thr 0.5 -bin mask)", path, int(inside.sum()), n_low)
    else:
        log.info("%s: mask is not binary (%d distinct values, e.g. labels); using voxels > 0 (%d voxels)",
                 path, values.size, int(inside.sum()))


SUBJECT_LAYOUTS = (
    # (DWI, b-values, b-vectors, brain mask): difftract's own names, then the HCP's
    (("dwi.nii.gz", "dwi.nii"), "dwi.bval", "dwi.bvec", "mask.nii.gz"),
    (("data.nii.gz", "data.nii"), "bvals", "bvecs", "nodif_brain_mask.nii.gz"),
)


def subject_files(directory: str | Path) -> tuple[Path, Path, Path, Path | None]:
    """The DWI, b-value, b-vector and mask files of a subject directory (mask None if absent).

    Two layouts are recognised: ``dwi.nii.gz, dwi.bval, dwi.bvec, mask.nii.gz`` (what
    ``difftract simulate`` writes) and the HCP's ``data.nii.gz, bvals, bvecs,
    nodif_brain_mask.nii.gz``.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(directory, "subject directory not found")
    for names, bval, bvec, mask in SUBJECT_LAYOUTS:
        found = [directory / n for n in names if (directory / n).exists()]
        if found:
            return found[0], directory / bval, directory / bvec, (directory / mask if (directory / mask).exists()
                                                                   else None)
    expected = "; ".join(f"{names[0]}, {bval}, {bvec}" for names, bval, bvec, _ in SUBJECT_LAYOUTS)
    raise InputError(directory, f"no diffusion scan found in the subject directory (expected {expected})")


def load_subject(directory: str | Path, **kwargs) -> DWI:
    """Load a subject directory (see :func:`subject_files` for the layouts)."""
    dwi, bval, bvec, mask = subject_files(directory)
    return load_dwi(dwi, bval, bvec, mask, **kwargs)


def check_affine(affine: np.ndarray, path: Path) -> np.ndarray:
    affine = np.asarray(affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        raise InputError(path, "affine contains NaN or Inf")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError(path, "affine is singular (zero voxel size or degenerate axes)")
    return affine


def check_dims(shape: tuple[int, ...], path: Path) -> tuple[int, int, int, int]:
    """A 4D (x, y, z, volumes) shape; trailing singleton axes beyond the fourth are dropped."""
    shape = tuple(int(n) for n in shape)
    while len(shape) > 4 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) == 4:
        if shape[3] < 2:
            raise InputError(path, f"DWI has a single volume (shape {shape}); give the whole diffusion series "
                                   "(b0 and diffusion-weighted volumes along the 4th axis)")
        return shape
    if len(shape) < 4:
        raise InputError(path, f"DWI must be 4D (x, y, z, volumes), found {len(shape)}D shape {shape}; a 3D "
                               "image is one volume: give the whole diffusion series")
    raise InputError(path, f"DWI must be 4D (x, y, z, volumes), found {len(shape)}D shape {shape}; put the "
                           "volumes on the 4th axis (e.g. mrconvert DWI -axes 0,1,2,4 dwi4d.nii.gz)")


BLOCK = 8   # volumes gathered before they are written into the rows (contiguous writes)


def _read_rows(img, path: Path, held: np.ndarray, b0s: np.ndarray,
               zero_nonfinite: bool) -> tuple[np.ndarray, tuple[float, float]]:
    """The ``(V, N)`` float32 rows of the ``held`` voxels, read one volume at a time, and the value range.

    Each volume is checked as it passes (NaN/Inf, signal) over all its voxels, background
    included, as a whole-image check would; no full-size temporary is made.
    """
    n = len(b0s)
    rows = np.empty((int(held.sum()), n), dtype=np.float32)
    bad_voxels = np.zeros(held.shape, dtype=bool)
    n_bad, any_signal, b0_signal = 0, False, False
    lo, hi = np.inf, -np.inf
    block = np.empty((min(BLOCK, n), rows.shape[0]), dtype=np.float32)
    for t, volume in enumerate(iter_volumes(img, path, "DWI", np.float32)):
        finite = np.isfinite(volume)
        if not finite.all():
            bad = ~finite
            n_bad += int(bad.sum())
            bad_voxels |= bad
            volume[bad] = 0.0          # counted; refused below unless zero_nonfinite
        any_signal = any_signal or bool(np.any(volume))
        b0_signal = b0_signal or bool(b0s[t] and np.any(volume > 0))
        lo, hi = min(lo, float(volume.min())), max(hi, float(volume.max()))
        block[t % BLOCK] = volume[held]
        if t % BLOCK == BLOCK - 1 or t == n - 1:
            first = t - t % BLOCK
            rows[:, first:t + 1] = block[:t + 1 - first].T
    if n_bad:
        if not zero_nonfinite:
            raise InputError(path, f"DWI contains {n_bad} NaN/Inf value(s) in {int(bad_voxels.sum())} voxel(s); "
                                   "fix the data or allow zeroing them (--zero-nonfinite)")
        warnings.warn(f"{path}: set {n_bad} NaN/Inf value(s) to 0", DifftractWarning, stacklevel=3)
    _check_signal(any_signal, b0_signal, b0s, path)
    return rows, (lo, hi)


def _check_signal(any_signal: bool, b0_signal: bool, b0s: np.ndarray, path: Path) -> None:
    """Refuse a DWI with no signal at all, or none in its b0 volumes (nothing to normalise by)."""
    if not any_signal:
        raise InputError(path, "DWI is all zeros (no signal in any volume); check the file and its conversion")
    if not b0_signal:
        raise InputError(path, f"the b0 volume(s) {np.flatnonzero(b0s).tolist()[:5]} hold no signal (all <= 0); "
                               "check that the bval file matches the DWI's volume order")


def _note_grid(shape: tuple[int, ...], affine: np.ndarray, path: Path) -> None:
    sizes = np.sqrt(np.sum(affine[:3, :3] ** 2, axis=0))
    if sizes.max() > ANISOTROPY_NOTE * sizes.min():
        log.info("%s: anisotropic voxels %s mm; steps are in mm and interpolation is trilinear in voxel space",
                 path, " x ".join(f"{v:.3g}" for v in sizes))
    thin = [axis for axis, n in zip("xyz", shape) if n == 1]
    if thin:
        log.info("%s: the grid is one voxel thick along %s %s; fits work per voxel; a streamline stops where it "
                 "leaves that slice", path, "/".join(thin), tuple(shape))
