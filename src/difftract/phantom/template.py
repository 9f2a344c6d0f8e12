"""The MNI152 tissue template that whole-brain phantoms are built in.

nilearn ships the ICBM 2009a symmetric template (T1, grey- and white-matter probability
maps at 1 mm, 197 x 233 x 189) inside its wheel, under ``nilearn/datasets/data``. We read
those files directly with nibabel, without importing nilearn: nothing is fetched, and the
import cost of nilearn (scikit-learn, pandas) is not paid. The brain is the T1 above 20 %
of its range (as nilearn's ``load_mni152_brain_mask``); CSF is the brain not claimed by
grey or white matter, which is what makes the ventricles and sulci CSF.

:func:`load_template` resamples the maps onto an isotropic grid that covers the brain with
a small margin. Each target voxel gets the mean of the 1 mm fractions in a box of the
voxel's width rounded to whole millimetres (none below 1.5 mm) before trilinear sampling,
so partial volume is kept rather than aliased. Coordinates: ``array mm`` (voxel index times voxel size) plus ``origin`` gives
MNI mm; the phantom's affine is therefore the template's world frame.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from ..errors import ConfigError

FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
BRAIN_THRESHOLD = 0.2      # of the T1 range, as nilearn's brain mask
VOXEL_SIZES = (1.25, 3.0)  # supported range, mm
MARGIN_MM = 4.0            # background around the brain's bounding box


@dataclass
class Template:
    """Tissue fractions on an isotropic grid.

    Attributes
    ----------
    voxel_size : float
        Voxel edge, mm.
    origin : (3,) array
        MNI mm of the centre of voxel (0, 0, 0); ``mni = index * voxel_size + origin``.
    gm, wm, csf : (X, Y, Z) float32 arrays
        Volume fractions in [0, 1], summing to at most 1 (the rest is outside the brain).
    brain : (X, Y, Z) bool array
        Voxels at least half inside the brain.
    t1 : (X, Y, Z) float32 array
        The T1 template scaled to [0, 1], for pictures.
    """

    voxel_size: float
    origin: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray
    t1: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.gm.shape)

    @property
    def affine(self) -> np.ndarray:
        """Voxel index to MNI mm (RAS, neurological)."""
        affine = np.diag([self.voxel_size] * 3 + [1.0])
        affine[:3, 3] = self.origin
        return affine

    def to_array_mm(self, mni: np.ndarray) -> np.ndarray:
        """MNI mm (..., 3) to the phantom's array mm."""
        return np.asarray(mni, dtype=np.float64) - self.origin

    def in_brain(self, array_mm: np.ndarray) -> np.ndarray:
        """The brain mask at points in array mm (P, 3), read at the nearest voxel (off the grid: False).

        This is a phantom's tissue domain (``Layout.domain``) on the template.
        """
        index = np.rint(np.asarray(array_mm, dtype=np.float64) / self.voxel_size).astype(np.int64)
        inside = np.all((index >= 0) & (index < self.brain.shape), axis=1)
        out = np.zeros(len(index), dtype=bool)
        out[inside] = self.brain[tuple(index[inside].T)]
        return out

    def sample(self, name: str, array_mm: np.ndarray) -> np.ndarray:
        """Trilinear value of map ``name`` (gm, wm, csf, t1) at points in array mm (P, 3)."""
        volume = getattr(self, name)
        index = np.asarray(array_mm, dtype=np.float64).T / self.voxel_size
        return ndimage.map_coordinates(volume, index, order=1, mode="constant", cval=0.0)


def template_dir() -> Path:
    """The folder inside the installed nilearn wheel that holds the MNI152 maps."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the brain phantom needs nilearn's MNI152 template: pip install 'nilearn>=0.10'")
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    missing = [f for f in FILES.values() if not (folder / f).is_file()]
    if missing:
        raise ConfigError(f"nilearn at {folder.parent.parent} lacks the MNI152 files {missing}; "
                          "reinstall nilearn (>= 0.10 ships them in its wheel)")
    return folder


def load_template(voxel_size: float = 2.0) -> Template:
    """The MNI152 tissue fractions resampled to ``voxel_size`` mm, cropped to the brain."""
    voxel_size = float(voxel_size)
    if not VOXEL_SIZES[0] <= voxel_size <= VOXEL_SIZES[1]:
        raise ConfigError(f"brain phantom voxel size must be in [{VOXEL_SIZES[0]}, {VOXEL_SIZES[1]}] mm, "
                          f"got {voxel_size:g}")
    folder = template_dir()
    images = {k: nib.load(folder / f) for k, f in FILES.items()}
    affine = images["t1"].affine  # 1 mm, axis-aligned, RAS
    maps = {k: np.asarray(im.dataobj, dtype=np.float32) / 255.0 for k, im in images.items()}
    brain_1mm = (maps["t1"] > BRAIN_THRESHOLD).astype(np.float32)
    gm = maps["gm"] * brain_1mm
    wm = maps["wm"] * brain_1mm
    total = np.maximum(gm + wm, 1.0)  # the two maps can overlap by a rounding margin
    gm, wm = gm / total, wm / total
    csf = np.clip(brain_1mm - gm - wm, 0.0, 1.0)

    # Target grid: the brain's bounding box in MNI mm plus a margin, in whole voxels.
    index = np.argwhere(brain_1mm > 0)
    lo_mm = nib.affines.apply_affine(affine, index.min(0)) - MARGIN_MM
    hi_mm = nib.affines.apply_affine(affine, index.max(0)) + MARGIN_MM
    shape = tuple(int(np.ceil((hi - lo) / voxel_size)) + 1 for lo, hi in zip(lo_mm, hi_mm))
    centre = (lo_mm + hi_mm) / 2.0
    origin = centre - (np.array(shape) - 1) / 2.0 * voxel_size

    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), 0).reshape(3, -1)
    mni = grid.T * voxel_size + origin
    src = nib.affines.apply_affine(np.linalg.inv(affine), mni).T  # 1 mm template indices
    width = voxel_size / float(np.abs(affine[0, 0]))

    size = int(np.floor(width + 0.5)) if width >= 1.5 else 1   # the nearest whole box; 2.5 mm: 3
    # An even-sized box filter averages [i - size/2, i + size/2 - 1]: its value at index i
    # belongs to position i - 1/2, so sample half a voxel further to keep the maps unshifted
    # (and the symmetric template symmetric).
    shifted = src + (size // 2 - (size - 1) / 2.0)

    def resample(volume: np.ndarray) -> np.ndarray:
        smooth = ndimage.uniform_filter(volume, size=size, mode="constant") if size > 1 else volume
        out = ndimage.map_coordinates(smooth, shifted, order=1, mode="constant", cval=0.0)
        return np.clip(out, 0.0, 1.0).reshape(shape).astype(np.float32)

    out = {k: resample(v) for k, v in (("gm", gm), ("wm", wm), ("csf", csf), ("brain", brain_1mm),
                                        ("t1", maps["t1"]))}
    brain = out["brain"] >= 0.5
    for k in ("gm", "wm", "csf"):
        out[k] *= brain
    return Template(voxel_size, origin, out["gm"], out["wm"], out["csf"], brain, out["t1"])
