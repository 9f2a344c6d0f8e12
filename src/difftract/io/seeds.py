"""Seed points from a text file: RAS mm, one ``x y z`` per line (what other trackers can read too)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError


def load_seeds_file(path: Path, affine: np.ndarray) -> np.ndarray:
    """Seeds in RAS mm (one ``x y z`` per line) -> voxel coordinates."""
    from nibabel.affines import apply_affine

    if not path.is_file():
        raise InputError(path, "seeds file not found" if not path.exists() else "seeds path is not a file")
    try:
        points = np.loadtxt(path, dtype=np.float64, ndmin=2, comments="#")
    except ValueError as exc:
        raise InputError(path, f"seeds file is not numeric 'x y z' lines ({exc})") from None
    if points.size == 0:
        raise InputError(path, "seeds file holds no seed")
    if points.shape[1] != 3:
        raise InputError(path, f"seeds file needs 3 columns (x y z in mm), found {points.shape[1]}")
    if not np.isfinite(points).all():
        raise InputError(path, "seeds file contains NaN or Inf")
    return apply_affine(np.linalg.inv(affine), points)
