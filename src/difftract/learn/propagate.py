"""A differentiable propagator for learning: every streamline advances for a fixed number of steps.

:class:`~difftract.tracking.tracker.Tracker` reproduces DIPY (a shrinking active set, packed
output, DIPY's length rules). For a loss, a fixed shape serves better: ``S`` streamlines
advance ``T`` steps together and one that stops is *frozen* (its later points repeat its
last one), giving ``points (S, T + 1, 3)`` that a loss can compare with a padded reference
directly. The steps are the tracker's (:func:`~difftract.tracking.integrators.step`, the
getter's cone, the criterion's status codes): a forward half's points are the tracker's
exactly. :func:`propagate_both` starts the backward half against the seed direction (the
tracker starts it against the first forward step), and a half that finds no direction
reports ``INVALIDPOINT``. This is the package's one differentiable propagator: the tracker
runs under ``torch.no_grad``.

Memory. Backpropagating through ``T`` steps keeps every step's interpolation graph: for
RK4 about 4 evaluations x 8 corners per point. ``checkpoint_every=K`` runs each block of K
steps under ``torch.utils.checkpoint``: only the block boundaries (and the points
themselves) are kept, and each block is recomputed during the backward pass. Gradients are
exact; on 3,000 streamlines x 300 RK4 steps the graph falls from 2.6 GB to 0.46 GB for a
third more time (``benchmarks/bench_backprop_memory.py``).

``truncate_every=K`` detaches the position and direction every K steps (truncated
backpropagation through time): a point's gradient then reaches the field only through the
last K steps that led to it. This bounds how far back an error is blamed (and the growth
of gradients through long chains of steps), not memory: with a loss on every point, the
graph of every block is still alive at the backward pass. Combine it with checkpointing
when both are wanted.

Getters must be stateless (``init`` returns ``None``: det, closest, peak): a checkpointed
block is recomputed and must take the same decisions, and the fixed-shape batch carries no
per-streamline state. Use ``peak`` for gradients: det and closest choose directions with
no gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

from ..errors import ConfigError
from ..tracking.getter_protocol import Getter
from ..tracking.integrators import INTEGRATORS, step
from ..tracking.stopping import INVALIDPOINT, TRACKPOINT, Criterion


@dataclass
class Paths:
    """Fixed-shape streamline halves.

    Attributes
    ----------
    points : (S, T + 1, 3)
        Voxel coordinates; point 0 is the seed, points after a stop repeat the last one.
    length : (S,)
        Points before the stop (the seed counts; 1 means it never moved).
    status : (S,)
        Why it stopped: the criterion's code, ``INVALIDPOINT`` when no direction was found,
        ``TRACKPOINT`` when it ran all ``T`` steps.
    weights : (S, T + 1) or None
        Soft-stop weights (running product of ``sigmoid(margin / soft_stop)`` over the points
        kept), 1 at the seed: for losses of your own that should feel how close a streamline
        came to stopping (none of this package's losses uses them).
    """

    points: torch.Tensor
    length: torch.Tensor
    status: torch.Tensor
    weights: torch.Tensor | None = None

    @property
    def valid(self) -> torch.Tensor:
        """(S, T + 1) bool: the points before the stop."""
        return torch.arange(self.points.shape[1], device=self.points.device) < self.length[:, None]

    @property
    def endpoints(self) -> torch.Tensor:
        """(S, 3) the last point of each half."""
        return self.points[torch.arange(len(self.points), device=self.points.device), self.length - 1]

    def streamline_ends(self) -> torch.Tensor:
        """(S/2, 2, 3) both ends of each streamline, for halves laid out as :func:`propagate_both` does."""
        ends = self.endpoints
        n = len(ends) // 2
        return torch.stack([ends[n:], ends[:n]], dim=1)


def propagate(getter: Getter, seeds: torch.Tensor, dirs: torch.Tensor, n_steps: int, *, step_mm: float,
              voxel_sizes, integrator: str = "rk4", criterion: Criterion | None = None, soft_stop: float | None = None,
              checkpoint_every: int | None = None, truncate_every: int | None = None) -> Paths:
    """Advance every seed ``n_steps`` steps from ``seeds (S, 3)`` along ``dirs (S, 3)``.

    Parameters
    ----------
    getter : Getter
        A stateless direction getter (its ``directions`` decides, its ``cos_max_angle`` is
        the cone and the RK curvature check).
    seeds, dirs
        Voxel coordinates and initial (previous) directions, unit, in the voxel frame.
    step_mm, voxel_sizes
        Step length in mm and mm per voxel (three numbers).
    criterion : Criterion, optional
        Stops streamlines (its ``margin`` gives the ``soft_stop`` weights); None runs every step.
    soft_stop : float, optional
        Temperature of the soft-stop weights (:attr:`Paths.weights`).
    checkpoint_every, truncate_every
        Steps per checkpointed block and per truncation window (see the module docstring).
    """
    if integrator not in INTEGRATORS:
        raise ConfigError(f"unknown integrator {integrator!r}; expected one of {', '.join(INTEGRATORS)}")
    if n_steps < 1:
        raise ConfigError(f"n_steps must be at least 1, got {n_steps}")
    for name, k in (("checkpoint_every", checkpoint_every), ("truncate_every", truncate_every)):
        if k is not None and k < 1:
            raise ConfigError(f"{name} must be at least 1, got {k}")
    if seeds.shape != dirs.shape or seeds.dim() != 2 or seeds.shape[1] != 3:
        raise ConfigError(f"seeds and dirs must both be (S, 3), got {tuple(seeds.shape)} and {tuple(dirs.shape)}")
    if getter.init(seeds[:0], dirs[:0], None) is not None:
        raise ConfigError(f"{type(getter).__name__} keeps per-streamline state; propagate needs a stateless getter")
    if soft_stop is not None and criterion is None:
        raise ConfigError("soft_stop needs a stopping criterion (its margin gives the weights)")
    sizes = np.asarray(voxel_sizes, dtype=np.float64)
    inv_voxel = torch.as_tensor(1.0 / sizes, dtype=seeds.dtype, device=seeds.device)
    cos_max = getter.cos_max_angle

    def field(points, prev):
        d, ok, _ = getter.directions(points, prev, None)
        return d, ok

    def block(pts, d, alive, weight, n: int):
        out, out_w, stops = [], [], []
        for _ in range(n):
            new, d_new, ok = step(field, pts, d, step_mm, integrator, cos_max, inv_voxel)
            code = criterion.status(new) if criterion is not None else torch.full_like(alive, TRACKPOINT, dtype=torch.long)
            code = torch.where(ok, code, INVALIDPOINT)
            go = alive & (code == TRACKPOINT)
            stops.append(torch.where(alive & ~go, code, TRACKPOINT))
            if soft_stop is not None:
                weight = torch.where(go, weight * torch.sigmoid(criterion.margin(new) / soft_stop), weight)
                out_w.append(weight)
            pts = torch.where(go[:, None], new, pts)
            d = torch.where(go[:, None], d_new, d)
            alive = go
            out.append(pts)
        w = torch.stack(out_w, 1) if soft_stop is not None else pts.new_zeros(len(pts), 0)
        return torch.stack(out, 1), d, alive, weight, w, torch.stack(stops, 1)

    S = len(seeds)
    pts, d = seeds, dirs
    alive = torch.ones(S, dtype=torch.bool, device=seeds.device)
    weight = seeds.new_ones(S)
    chunks, weights, stops = [seeds[:, None]], [weight[:, None]], []
    block_size = min(x for x in (checkpoint_every, truncate_every, n_steps) if x is not None)
    done = 0
    while done < n_steps:
        n = min(block_size, n_steps - done)
        if truncate_every is not None:
            n = min(n, truncate_every - done % truncate_every)      # blocks end on truncation boundaries
            if done and done % truncate_every == 0:
                pts, d, weight = pts.detach(), d.detach(), weight.detach()
        if checkpoint_every is not None and torch.is_grad_enabled():
            seg, d, alive, weight, w, code = checkpoint(block, pts, d, alive, weight, n, use_reentrant=False)
        else:
            seg, d, alive, weight, w, code = block(pts, d, alive, weight, n)
        pts = seg[:, -1]
        chunks.append(seg)
        weights.append(w)
        stops.append(code)
        done += n
    points = torch.cat(chunks, 1)
    code = torch.cat(stops, 1)
    stopped = code != TRACKPOINT
    first = torch.where(stopped.any(1), stopped.float().argmax(1), n_steps)
    length = first + 1
    status = torch.where(stopped.any(1), code.gather(1, first.clamp(max=n_steps - 1)[:, None])[:, 0], TRACKPOINT)
    return Paths(points, length, status, torch.cat(weights, 1) if soft_stop is not None else None)


def propagate_both(getter: Getter, seeds: torch.Tensor, dirs: torch.Tensor, n_steps: int, **kwargs) -> Paths:
    """Both halves of every streamline: rows ``0..S-1`` along ``dirs``, rows ``S..2S-1`` against them."""
    return propagate(getter, torch.cat([seeds, seeds]), torch.cat([dirs, -dirs]), n_steps, **kwargs)
