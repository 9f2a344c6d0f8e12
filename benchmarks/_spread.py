"""How far tracked steps stray from the true fibre directions in crossing voxels (bench_ddtracking).

A probabilistic rule should spread its steps as the true directions spread; a deterministic
one should follow the peaks. Both are read from the steps of a tractogram that fall in voxels
with two or more true populations: the angle to the nearest true peak.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np


def crossing_spread(lines: list[np.ndarray], peaks_file: Path) -> np.ndarray:
    """Angles (degrees) between each step inside a crossing voxel (2+ true peaks) and the nearest true peak.

    ``lines`` in voxel space; ``peaks_file`` a phantom's ``gt/peaks.nii.gz`` (unit vectors in the
    data-array frame, 3 populations x 3, zero where absent).
    """
    peaks = np.asarray(nib.load(peaks_file).dataobj, dtype=np.float64)
    peaks = peaks.reshape(*peaks.shape[:3], -1, 3)
    crossing = (np.linalg.norm(peaks, axis=-1) > 0).sum(-1) >= 2
    angles = []
    for line in lines:
        if len(line) < 2:
            continue
        mid = 0.5 * (line[1:] + line[:-1])
        tangent = np.diff(line, axis=0)
        tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-12)
        voxel = np.clip(np.rint(mid).astype(int), 0, np.array(crossing.shape) - 1)
        inside = crossing[tuple(voxel.T)]
        if inside.any():
            cos = np.abs(np.einsum("nj,npj->np", tangent[inside], peaks[tuple(voxel[inside].T)])).max(axis=1)
            angles.append(np.degrees(np.arccos(np.clip(cos, 0, 1))))
    return np.concatenate(angles) if angles else np.zeros(0)


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
