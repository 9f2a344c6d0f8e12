"""Which voxels streamlines touch: every voxel a segment passes through, and endpoints.

Streamlines are in voxel space with integer coordinates at voxel centres, so voxel
``i`` spans [i - 0.5, i + 0.5). Endpoint lookup follows scilpy's Tractometer: shift to a
corner origin, truncate, and take the nearest voxel when the point is off the grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _segments(streamlines: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Start and end points of all segments, plus each single-point streamline as a null segment."""
    starts, ends = [], []
    for sl in streamlines:
        sl = np.asarray(sl, dtype=np.float64)
        if len(sl) == 1:
            starts.append(sl), ends.append(sl)
        elif len(sl) > 1:
            starts.append(sl[:-1]), ends.append(sl[1:])
    if not starts:
        return np.zeros((0, 3)), np.zeros((0, 3))
    return np.concatenate(starts), np.concatenate(ends)


def clip_segments(a: np.ndarray, b: np.ndarray, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Clip segments to the grid box [-0.5, dim - 0.5] (Liang-Barsky); segments outside are dropped."""
    lo, hi = np.full(3, -0.5), np.asarray(shape, float) - 0.5
    d = b - a
    t0, t1 = np.zeros(len(a)), np.ones(len(a))
    with np.errstate(divide="ignore", invalid="ignore"):
        for bound, sign in ((lo, 1.0), (hi, -1.0)):
            # Inside when sign * (a + t d - bound) >= 0.
            num, den = sign * (a - bound), sign * d
            t = -num / den
            entering, leaving = den > 0, den < 0
            t0 = np.maximum(t0, np.where(entering, t, -np.inf).max(axis=1))
            t1 = np.minimum(t1, np.where(leaving, t, np.inf).min(axis=1))
            outside_parallel = (den == 0) & (num < 0)
            t1 = np.where(outside_parallel.any(axis=1), -1.0, t1)
    keep = t0 <= t1
    return a[keep] + t0[keep, None] * d[keep], a[keep] + t1[keep, None] * d[keep]


def segment_voxels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer voxel indices (V, 3) of every voxel the segments a[i] -> b[i] pass through.

    Segments are split so each piece spans less than one voxel per axis; the crossings of
    voxel faces then split a piece into at most four runs, whose midpoints name the
    voxels, and both end points add their own voxels (floor(p + 0.5), as endpoint
    lookup does). Exact up to floating-point ties where a segment crosses two faces at
    the same point. Duplicates are not removed; clip long off-grid segments first.
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    n_split = np.maximum(1, np.ceil(np.abs(b - a).max(axis=1, initial=0.0) / 0.99)).astype(int)
    seg = np.repeat(np.arange(len(a)), n_split)
    k = np.arange(len(seg)) - np.repeat(np.cumsum(n_split) - n_split, n_split)
    frac0, frac1 = k / n_split[seg], (k + 1) / n_split[seg]
    d = b[seg] - a[seg]
    p0, p1 = a[seg] + frac0[:, None] * d, a[seg] + frac1[:, None] * d
    step = p1 - p0
    # The one voxel face each axis may cross, and where along the piece (t in (0, 1)).
    face = np.floor(p0 + 0.5) + np.where(step > 0, 0.5, -0.5)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(step != 0, (face - p0) / step, np.inf)
    t = np.where((t > 0) & (t < 1), t, np.inf)
    bounds = np.sort(np.concatenate([np.zeros((len(t), 1)), t, np.ones((len(t), 1))], axis=1), axis=1)
    bounds = np.minimum(bounds, 1.0)
    samples = np.concatenate([np.zeros((len(t), 1)), 0.5 * (bounds[:, :-1] + bounds[:, 1:])], axis=1)
    points = p0[:, None, :] + samples[..., None] * step[:, None, :]
    return np.floor(points.reshape(-1, 3) + 0.5).astype(np.int64)


def traversed_voxels(streamlines: Sequence[np.ndarray], shape: tuple[int, int, int]) -> np.ndarray:
    """Boolean map of the voxels any streamline segment passes through (off-grid parts dropped)."""
    out = np.zeros(shape, dtype=bool)
    a, b = clip_segments(*_segments(streamlines), shape)
    if len(a) == 0:
        return out
    vox = segment_voxels(a, b)
    keep = np.all((vox >= 0) & (vox < np.asarray(shape)), axis=1)
    vox = vox[keep]
    out[vox[:, 0], vox[:, 1], vox[:, 2]] = True
    return out


def endpoint_voxels(points: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Voxel indices (P, 3) of points, scilpy style: floor(p + 0.5), clipped to the grid."""
    idx = np.floor(np.asarray(points, dtype=np.float64) + 0.5).astype(np.int64)
    return np.clip(idx, 0, np.asarray(shape) - 1)
