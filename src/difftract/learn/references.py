"""Reference streamlines cut at seeds into halves aligned by arc length with propagated ones.

A propagated half starts at a seed and moves ``step_mm`` per step, so its point ``i`` is
``i * step_mm`` of arc from the seed. A reference streamline cut at the same seed and
resampled every ``step_mm`` from it (both ways) has its point ``i`` at the same arc length:
the two can be compared point by point (:func:`~difftract.learn.losses.point_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError
from ..tracking.integrators import normalize


@dataclass
class References:
    """Halves of reference streamlines, laid out as :func:`~difftract.learn.propagate.propagate_both` lays out paths.

    Rows ``0..S-1`` are the forward halves, rows ``S..2S-1`` the backward halves of the same
    ``S`` seeds.

    Attributes
    ----------
    seeds : (S, 3)
        Voxel coordinates on the reference streamlines.
    dirs : (S, 3)
        Unit forward directions at the seeds (voxel frame).
    points : (2S, T + 1, 3)
        The halves, point 0 the seed, padded with their last point.
    length : (2S,)
        Points in each half (seed included).
    streamline, bundle : (S,)
        Index of the reference streamline and of its bundle.
    """

    seeds: torch.Tensor
    dirs: torch.Tensor
    points: torch.Tensor
    length: torch.Tensor
    streamline: torch.Tensor
    bundle: torch.Tensor

    def to(self, device=None, dtype=None) -> References:
        f = (lambda t: t.to(device=device, dtype=dtype))
        i = (lambda t: t.to(device=device))
        return References(f(self.seeds), f(self.dirs), f(self.points), i(self.length), i(self.streamline),
                          i(self.bundle))


def _resample_from(points_mm: np.ndarray, start: float, step: float, n: int) -> np.ndarray:
    """Up to ``n`` points every ``step`` of arc length from arc ``start`` on, along a polyline (mm)."""
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points_mm, axis=0), axis=1))])
    at = start + step * np.arange(n)
    at = at[at <= arc[-1] + 1e-9]
    return np.stack([np.interp(at, arc, points_mm[:, i]) for i in range(3)], axis=1)


def reference_halves(streamlines: list[np.ndarray], n_seeds: int, n_steps: int, *, step_mm: float,
                     voxel_sizes, rng: np.random.Generator, bundles: np.ndarray | None = None,
                     margin_mm: float | None = None) -> References:
    """Cut ``n_seeds`` random reference streamlines at a random point each.

    Parameters
    ----------
    streamlines : list of (n_i, 3) arrays
        Voxel coordinates.
    n_seeds : int
        Seeds drawn, each on a streamline chosen uniformly (with replacement).
    n_steps : int
        Steps of the halves (each has at most ``n_steps + 1`` points).
    step_mm, voxel_sizes
        Arc-length spacing in mm, mm per voxel.
    rng : numpy Generator
    bundles : (len(streamlines),) int, optional
        Bundle of each streamline (default 0).
    margin_mm : float, optional
        Seeds at least this far (arc) from either end (default: one step).
    """
    if not streamlines:
        raise ConfigError("no reference streamlines")
    if n_seeds < 1 or n_steps < 1:
        raise ConfigError(f"need n_seeds >= 1 and n_steps >= 1, got {n_seeds} and {n_steps}")
    sizes = np.asarray(voxel_sizes, dtype=np.float64)
    bundles = np.zeros(len(streamlines), int) if bundles is None else np.asarray(bundles, int)
    margin = step_mm if margin_mm is None else float(margin_mm)
    T = n_steps + 1
    seeds, dirs = np.zeros((n_seeds, 3)), np.zeros((n_seeds, 3))
    halves = np.zeros((2 * n_seeds, T, 3))
    length = np.zeros(2 * n_seeds, int)
    which = rng.integers(len(streamlines), size=n_seeds)
    for k, s in enumerate(which):
        mm = np.asarray(streamlines[s], dtype=np.float64) * sizes
        total = np.linalg.norm(np.diff(mm, axis=0), axis=1).sum()
        lo, hi = min(margin, total / 2), max(total - margin, total / 2)
        at = rng.uniform(lo, hi)
        fwd = _resample_from(mm, at, step_mm, T)
        bwd = _resample_from(mm[::-1], total - at, step_mm, T)
        for row, half in ((k, fwd), (n_seeds + k, bwd)):
            length[row] = len(half)
            halves[row, : len(half)] = half / sizes
            halves[row, len(half):] = half[-1] / sizes
        seeds[k] = fwd[0] / sizes
        ahead = fwd[1] if len(fwd) > 1 else mm[-1]
        dirs[k] = ahead - fwd[0]
    t = (lambda a: torch.as_tensor(a, dtype=torch.float32))
    return References(t(seeds), normalize(t(dirs)), t(halves), torch.as_tensor(length),
                      torch.as_tensor(which), torch.as_tensor(bundles[which]))
