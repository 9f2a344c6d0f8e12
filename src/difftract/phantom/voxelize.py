"""From tubes to voxels: per-bundle volume fractions, fibre directions and end regions.

Every voxel is sub-sampled on a regular ``n x n x n`` grid; each sub-sample inside a
tube carries that bundle's local fibre direction. Where tubes overlap, the sub-sample's
fibre volume is shared equally between them. The result is a sparse list of
(voxel, direction, weight) samples per bundle from which the signal and the ground
truth are both computed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .geometry import Tube


@dataclass
class Coverage:
    """Sub-samples of one bundle that fall inside its tube.

    Attributes
    ----------
    voxel : (P,) int64 flat voxel index
    sample : (P,) int64 global sub-sample id (voxel * n^3 + k)
    direction : (P, 3) unit fibre direction
    s : (P,) arc length at the sample (mm)
    weight : (P,) volume fraction of the voxel this sample stands for
    """

    voxel: np.ndarray
    sample: np.ndarray
    direction: np.ndarray
    s: np.ndarray
    weight: np.ndarray | None = None


def subvoxel_offsets(n: int) -> np.ndarray:
    """The n^3 regular sub-sample offsets inside a voxel, in voxel units, centred on 0."""
    g = (np.arange(n) + 0.5) / n - 0.5
    return np.stack(np.meshgrid(g, g, g, indexing="ij"), axis=-1).reshape(-1, 3)


def cover(tube: Tube, shape: tuple[int, int, int], voxel_size: float, n: int) -> Coverage:
    """Sub-samples of the grid that lie inside ``tube`` (searched only in voxels near its centreline)."""
    pad = max(tube.r1.max(), tube.r2.max()) + voxel_size
    lo = np.clip(np.floor((tube.centre.min(axis=0) - pad) / voxel_size), 0, None).astype(int)
    hi = np.minimum(np.ceil((tube.centre.max(axis=0) + pad) / voxel_size).astype(int) + 1, shape)
    axes = [np.arange(a, b) for a, b in zip(lo, hi)]
    ijk = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    # Only voxels near the centreline can hold inside sub-samples: a point inside the tube is
    # within the largest radius plus one sample step of its nearest centreline sample, and a
    # sub-sample within half a voxel diagonal of its voxel's centre. A long oblique bundle
    # fills a small part of its bounding box, so this skips most sub-samples (same result).
    reach = max(tube.r1.max(), tube.r2.max()) + (tube.s[1] - tube.s[0] if len(tube.s) > 1 else 0.0)
    distance, _ = tube.tree.query(ijk * voxel_size)
    ijk = ijk[distance <= reach + voxel_size * (np.sqrt(3.0) / 2.0 + 0.5)]
    offsets = subvoxel_offsets(n)
    points = (ijk[:, None, :] + offsets[None]).reshape(-1, 3) * voxel_size
    where = tube.locate(points)
    inside = where["inside"]
    flat = np.ravel_multi_index(ijk.T, shape)
    voxel = np.repeat(flat, len(offsets))[inside]
    k = np.tile(np.arange(len(offsets)), len(ijk))[inside]
    return Coverage(voxel, voxel * len(offsets) + k, where["direction"][inside], where["s"][inside])


def share_overlaps(coverages: list[Coverage], n: int) -> None:
    """Set each sample's weight: 1/n^3 of a voxel, split equally where tubes overlap."""
    if not coverages:
        return
    all_samples = np.concatenate([c.sample for c in coverages])
    _, inverse, counts = np.unique(all_samples, return_inverse=True, return_counts=True)
    shares = counts[inverse]
    start = 0
    for c in coverages:
        c.weight = 1.0 / (n**3 * shares[start:start + len(c.sample)])
        start += len(c.sample)


def fractions(c: Coverage, n_voxels: int) -> np.ndarray:
    """Volume fraction of the bundle in every voxel (flat)."""
    return np.bincount(c.voxel, weights=c.weight, minlength=n_voxels)


def mean_directions(c: Coverage, n_voxels: int) -> np.ndarray:
    """Per-voxel principal direction (flat, (V, 3)) of the bundle's sub-sample directions.

    The principal eigenvector of the weighted mean outer product: sign-free, as fibre
    directions are.
    """
    out = np.zeros((n_voxels, 3))
    if len(c.voxel) == 0:
        return out
    outer = (c.direction[:, :, None] * c.direction[:, None, :]).reshape(-1, 9) * c.weight[:, None]
    sums = np.stack([np.bincount(c.voxel, weights=outer[:, j], minlength=n_voxels) for j in range(9)], axis=1)
    used = np.unique(c.voxel)
    _, vecs = np.linalg.eigh(sums[used].reshape(-1, 3, 3))
    out[used] = vecs[:, :, -1]
    return out


def end_regions(c: Coverage, length: float, depth: float, n_voxels: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat boolean head and tail regions: voxels holding tube samples within ``depth`` mm of each end."""
    head = np.zeros(n_voxels, dtype=bool)
    tail = np.zeros(n_voxels, dtype=bool)
    head[c.voxel[c.s <= depth]] = True
    tail[c.voxel[c.s >= length - depth]] = True
    return head, tail
