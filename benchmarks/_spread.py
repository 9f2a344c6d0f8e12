"""How far tracked steps stray from the true fibre directions in crossing voxels (bench_ddtracking).

A probabilistic rule should spread its steps as the true directions spread; a deterministic
one should follow the peaks. Both are read from the steps of a tractogram that fall in voxels
with two or more true populations: the angle to the nearest true peak.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np


def load_crossings(peaks_file: Path) -> tuple[np.ndarray, np.ndarray]:
    """A phantom's true peaks ``(X, Y, Z, 3, 3)`` (``gt/peaks.nii.gz``: unit vectors in the data-array
    frame, zero where absent) and its crossing voxels (two or more populations)."""
    peaks = np.asarray(nib.load(peaks_file).dataobj, dtype=np.float64)
    peaks = peaks.reshape(*peaks.shape[:3], -1, 3)
    return peaks, (np.linalg.norm(peaks, axis=-1) > 0).sum(-1) >= 2


def crossing_spread(lines: list[np.ndarray], peaks: np.ndarray, crossing: np.ndarray) -> np.ndarray:
    """Angles (degrees) between each step inside a crossing voxel and the nearest true peak.

    ``lines`` in voxel space; ``peaks`` and ``crossing`` from :func:`load_crossings`. All
    steps of all streamlines at once: a step joins consecutive points of one streamline.
    """
    lines = [np.asarray(line, dtype=np.float64) for line in lines if len(line) >= 2]
    if not lines:
        return np.zeros(0)
    points = np.concatenate(lines)
    ends = np.cumsum([len(line) for line in lines])[:-1]          # first point of every later streamline
    step = np.ones(len(points) - 1, dtype=bool)
    step[ends - 1] = False                                         # no step from one streamline to the next
    tangent = (points[1:] - points[:-1])[step]
    mid = (0.5 * (points[1:] + points[:-1]))[step]
    tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-12)
    voxel = np.clip(np.rint(mid).astype(int), 0, np.array(crossing.shape) - 1)
    inside = crossing[tuple(voxel.T)]
    cos = np.abs(np.einsum("nj,npj->np", tangent[inside], peaks[tuple(voxel[inside].T)])).max(axis=1)
    return np.degrees(np.arccos(np.clip(cos, 0, 1)))


def print_spreads(spreads: dict[str, dict[str, dict]]) -> dict[str, dict[str, dict]]:
    """Per column and rule: median and 90th percentile of :func:`crossing_spread` over the column's phantoms."""
    out: dict[str, dict[str, dict]] = {}
    print("\nAngle (degrees) between each step in a crossing voxel and the nearest true peak (median / 90th "
          "percentile). The ground truth's is the true dispersion a probabilistic rule should match; in these "
          "phantoms it is ~0 (streamlines run along their peaks), so each rule's figure is also its error")
    for col, by_phantom in spreads.items():
        rules = next(iter(by_phantom.values()))
        for rule in rules:
            a = np.concatenate([p[rule] for p in by_phantom.values()])
            if len(a):
                out.setdefault(col, {})[rule] = {"median": float(np.median(a)), "p90": float(np.percentile(a, 90)),
                                                 "steps": int(len(a))}
                print(f"[{col}] {rule:30} {np.median(a):6.1f} {np.percentile(a, 90):6.1f}   ({len(a)} steps)")
    return out
