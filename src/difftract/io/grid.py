"""A scan's grid without its signal: what tracking a field made elsewhere needs.

``difftract track --sh FOD`` tracks a given fODF: it needs the scan's grid (shape, affine,
voxel sizes), its brain mask and the file names for the sidecar, but not the diffusion
signal, which for an HCP scan is gigabytes to decompress. :func:`load_grid` checks
everything :func:`~difftract.io.dwi.load_dwi` checks but the voxel values (the header,
the gradients against the volume count, the mask on the grid) and reads none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .dwi import check_affine, check_dims, load_mask
from .gradients import B0_THRESHOLD, read_gradients
from .nifti import open_nifti


@dataclass
class ScanGrid:
    """The grid a scan lives on, its brain mask and its files (as :class:`~difftract.io.dwi.DWI` has them)."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    mask: np.ndarray | None = None
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def voxel_sizes(self) -> np.ndarray:
        """Voxel edge lengths in mm (the column norms of the affine)."""
        return np.sqrt(np.sum(self.affine[:3, :3] ** 2, axis=0))


def load_grid(dwi: str | Path, bval: str | Path, bvec: str | Path, mask: str | Path | None = None, *,
              b0_threshold: float = B0_THRESHOLD) -> ScanGrid:
    """The grid of a scan, checked as :func:`~difftract.io.dwi.load_dwi` checks it, without reading its signal."""
    dwi, bval, bvec = Path(dwi), Path(bval), Path(bvec)
    img = open_nifti(dwi, "DWI")
    shape = check_dims(img.shape, dwi)
    affine = check_affine(img.affine, dwi)
    read_gradients(bval, bvec, shape[3], b0_threshold)
    files = {"dwi": dwi, "bval": bval, "bvec": bvec}
    mask_array = None
    if mask is not None:
        mask_array = load_mask(mask, reference_shape=shape[:3], reference_affine=affine)
        files["mask"] = Path(mask)
    return ScanGrid(tuple(int(n) for n in shape[:3]), affine, mask_array, files)
