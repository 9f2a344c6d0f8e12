"""Which voxels streamlines touch, by the rule of scilpy's Tractometer, vectorised.

The Tractometer (scilpy's ``compute_tract_counts_map``) walks every segment from voxel face
to voxel face in corner-origin voxel coordinates (voxel ``i`` spans [i, i+1)) and tags
the voxel holding the midpoint of each piece; the last point of a streamline tags its
own voxel. Doing the same walk with the same floating-point operations, here over all
segments at once, gives the same voxels, including where a segment runs along a voxel
face. Three cases differ on purpose, where scilpy tags voxels that are not traversed:
parts of segments off the grid are clipped away (scilpy writes out of its array), a tag
on the grid's upper faces is dropped (scilpy's flat index wraps it to the opposite side),
and a one-point streamline tags its own voxel (scilpy re-tags the previous streamline's
last voxel).

Coordinates: streamlines in memory have voxel centres at integers; they are shifted to
the corner origin in float32, exactly as DIPY's ``StatefulTractogram.to_corner`` does,
so file-based and in-memory scoring see the same numbers. Endpoints are looked up the
Tractometer's way (corner origin, truncated to integers, nearest voxel off the grid).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MAX_STEPS = 100_000  # face crossings per segment, a guard against non-terminating input


def _concat(streamlines: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """All points (float32, P x 3) one streamline after another, and the streamline lengths (S,)."""
    lengths = np.array([len(s) for s in streamlines], dtype=np.int64)
    if lengths.sum() == 0:
        return np.zeros((0, 3), dtype=np.float32), lengths
    return np.concatenate([np.asarray(s, dtype=np.float32).reshape(-1, 3) for s in streamlines if len(s)]), lengths


def to_corner(streamlines: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated corner-origin points (float32, P x 3) and the streamline lengths (S,)."""
    points, lengths = _concat(streamlines)
    return points + np.float32(0.5), lengths


def clip_segments(a: np.ndarray, b: np.ndarray, shape: tuple[int, int, int]):
    """Clip segments to the box [0, dim] (Liang-Barsky).

    Returns the clipped ends, a mask of the segments kept, and whether each kept end
    was moved (``end_clipped``).
    """
    lo, hi = np.zeros(3), np.asarray(shape, dtype=np.float64)
    d = b - a
    t0, t1 = np.zeros(len(a)), np.ones(len(a))
    with np.errstate(divide="ignore", invalid="ignore"):
        for bound, sign in ((lo, 1.0), (hi, -1.0)):
            num, den = sign * (a - bound), sign * d      # inside when num + t den >= 0
            t = -num / den
            t0 = np.maximum(t0, np.where(den > 0, t, -np.inf).max(axis=1))
            t1 = np.minimum(t1, np.where(den < 0, t, np.inf).min(axis=1))
            t1 = np.where(((den == 0) & (num < 0)).any(axis=1), -1.0, t1)
    keep = t0 <= t1
    inside_a = np.all((a >= lo) & (a <= hi), axis=1)
    inside_b = np.all((b >= lo) & (b <= hi), axis=1)
    a2 = np.where(inside_a[:, None], a, a + t0[:, None] * d)  # unclipped ends keep their exact bits
    b2 = np.where(inside_b[:, None], b, a + t1[:, None] * d)
    return a2[keep], b2[keep], keep, ~inside_b[keep]


def _next_face(p: np.ndarray, d: np.ndarray) -> np.ndarray:
    """The voxel face a point reaches next along ``d`` (scilpy's closest edge, eps = 1)."""
    return np.where(d >= 0.0, np.floor(p + 1.0), np.ceil(p - 1.0))


def walk_segments(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Walk corner-origin segments ``a[i] -> b[i]`` face to face (float64).

    Returns
    -------
    segment : (K,) int64
        The segment of each tag.
    voxel : (K, 3) int64
        The tagged voxel (floor of each piece's midpoint); may be off the grid.
    last : (S, 3) float64
        Where each walk stopped (the last face reached, or ``a`` itself): the final
        piece ``last -> b`` is not tagged here (the next segment, or the streamline's
        last-point rule, covers it).
    """
    d = b - a
    norm = np.sqrt(d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1] + d[:, 2] * d[:, 2])
    point = a.copy()
    on_face = np.any(np.floor(a) == a, axis=1)
    face = np.where(on_face[:, None], a, _next_face(a, d))
    remaining = norm.copy()
    active = np.flatnonzero(norm != 0)
    seg_tags, vox_tags = [], []
    for _ in range(MAX_STEPS):
        if active.size == 0:
            break
        p, dd, f = point[active], d[active], face[active]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(dd != 0, np.abs((f - p) / dd), np.inf).min(axis=1)
        ratio = np.minimum(ratio, 10000.0)
        rem = remaining[active] - ratio * norm[active]
        remaining[active] = rem
        go = ~((rem < 0) & ~(np.abs(rem) < 1e-8))
        active, p, dd, ratio = active[go], p[go], dd[go], ratio[go]
        seg_tags.append(active)
        vox_tags.append(np.floor(p + (0.5 * ratio)[:, None] * dd))
        p = ratio[:, None] * dd + p
        p[np.abs(p) <= 1e-16] = 0.0
        point[active] = p
        face[active] = _next_face(p, dd)
    segment = np.concatenate(seg_tags) if seg_tags else np.zeros(0, dtype=np.int64)
    voxel = np.concatenate(vox_tags) if vox_tags else np.zeros((0, 3))
    return segment.astype(np.int64), voxel.astype(np.int64), point


def tagged_voxels(points: np.ndarray, lengths: np.ndarray,
                  shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """All (streamline, voxel) tags of corner-origin streamlines, duplicates included, on the grid only."""
    n_segments = np.maximum(lengths - 1, 0)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    sid = np.repeat(np.arange(len(lengths)), n_segments)
    first = np.ones(len(points), dtype=bool)
    first[ends[lengths > 0] - 1] = False                 # every point but each streamline's last starts a segment
    seg_first = np.flatnonzero(first)
    pts = points.astype(np.float64)
    a, b = pts[seg_first], pts[seg_first + 1]
    is_last = np.zeros(len(sid), dtype=bool)
    multi = lengths > 1
    is_last[np.cumsum(lengths[multi] - 1) - 1] = True
    a, b, keep, end_clipped = clip_segments(a, b, shape)
    sid, is_last = sid[keep], is_last[keep]
    segment, voxel, last = walk_segments(a, b)
    sids = [sid[segment]]
    voxels = [voxel]
    # the last point of each streamline tags the voxel of its final piece (not when clipped off the grid)
    final = is_last & ~end_clipped
    sids.append(sid[final])
    voxels.append(np.floor(last[final] + 0.5 * (b[final] - last[final])).astype(np.int64))
    # one-point streamlines tag their own voxel
    single = np.flatnonzero(lengths == 1)
    sids.append(single)
    voxels.append(np.floor(pts[starts[single]]).astype(np.int64))
    sid_all, vox_all = np.concatenate(sids), np.concatenate(voxels)
    on_grid = np.all((vox_all >= 0) & (vox_all < np.asarray(shape)), axis=1)
    return sid_all[on_grid], vox_all[on_grid]


def _points(streamlines: Sequence[np.ndarray], corner: bool) -> tuple[np.ndarray, np.ndarray]:
    return _concat(streamlines) if corner else to_corner(streamlines)


def streamline_voxels(streamlines: Sequence[np.ndarray], shape: tuple[int, int, int], *,
                      corner: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Unique pairs (streamline index, C-order flat voxel index) of the voxels each streamline traverses.

    ``streamlines`` have voxel centres at integers, or the corner origin with ``corner=True``
    (as DIPY's ``to_corner`` leaves them).
    """
    sid, vox = tagged_voxels(*_points(streamlines, corner), shape)
    flat = np.ravel_multi_index(tuple(vox.T), shape) if len(vox) else np.zeros(0, dtype=np.int64)
    pairs = np.unique(np.stack([sid, flat.astype(np.int64)], axis=1), axis=0) if len(sid) else np.zeros((0, 2),
                                                                                                       np.int64)
    return pairs[:, 0], pairs[:, 1]


def traversed_voxels(streamlines: Sequence[np.ndarray], shape: tuple[int, int, int], *,
                     corner: bool = False) -> np.ndarray:
    """Boolean map of the voxels any streamline passes through (off-grid parts dropped)."""
    points, lengths = _points(streamlines, corner)
    out = np.zeros(shape, dtype=bool)
    _, vox = tagged_voxels(points, lengths, shape)
    out[tuple(vox.T)] = True
    return out


def endpoint_voxels(points: np.ndarray, shape: tuple[int, int, int], *, corner: bool = False) -> np.ndarray:
    """Voxel indices (P, 3) of points, the Tractometer's way.

    Shift to the corner origin in float32 (unless ``corner``), truncate towards zero, and
    take the nearest voxel when off the grid (scilpy: int16 cast, then nearest lookup).
    """
    points = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    corner_points = points if corner else points + np.float32(0.5)
    idx = np.trunc(corner_points).astype(np.int64)
    return np.clip(idx, 0, np.asarray(shape) - 1)


def count_off_grid(streamlines: Sequence[np.ndarray], shape: tuple[int, int, int]) -> int:
    """Number of streamlines with a point outside the grid box (corner coordinates [0, dim])."""
    points, lengths = to_corner(streamlines)
    if len(points) == 0:
        return 0
    outside = np.any((points < 0) | (points > np.asarray(shape, dtype=np.float32)), axis=1)
    owner = np.repeat(np.arange(len(lengths)), lengths)
    return int(np.unique(owner[outside]).size)
