"""Writing a set of fitted maps (FA, MD, tensor, ...) as one output directory.

The directory appears complete or not at all: every map and its JSON sidecar are written
into a staging directory that replaces the target at the end (``force`` to overwrite).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_directory
from .nifti import save_nifti


def save_maps(out_dir: str | Path, maps: dict[str, tuple[np.ndarray, str]], affine: np.ndarray,
              record: dict[str, Any], force: bool = False,
              extra: Callable[[Path], None] | None = None) -> dict[str, Path]:
    """Write ``maps`` as ``out_dir/NAME.nii.gz`` (float32) with a sidecar each.

    Parameters
    ----------
    maps : dict
        ``name -> (array, description)``; the description goes into the sidecar.
    record : dict
        The provenance record shared by all sidecars.
    extra : callable, optional
        Called with the staging directory to add other files (e.g. a QC picture).

    Returns
    -------
    dict
        ``name -> final path``.
    """
    out_dir = Path(out_dir)
    with atomic_directory(out_dir, force=force) as tmp:
        for name, (array, description) in maps.items():
            data = np.asarray(array)
            data = data.astype(np.float32) if data.dtype.kind == "f" else data
            save_nifti(tmp / f"{name}.nii.gz", data, affine,
                       sidecar={**record, "map": name, "description": description})
        if extra is not None:
            extra(tmp)
    return {name: out_dir / f"{name}.nii.gz" for name in maps}
