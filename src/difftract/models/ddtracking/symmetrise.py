"""DDTracking's direction averaged over a group of the voxel grid's symmetries (test-time symmetrisation).

A network trained with the 48 grid symmetries (:mod:`.augment`) is equivariant only as far as
it learnt to be. Measured one step at a time along the true streamlines of a phantom (the
network fed the true past; ``benchmarks/measure_equivariance.py``), the shipped ``full``
network's direction for a turned input, turned back, differs from its direction for the input
by a median 4.4-6.2 degrees, about its whole median error against the truth. Where the fODF
shows one peak for two crossing bundles, the choice between them then follows the bundles'
orientation to the grid axes, not the streamline's past: on the foreign test phantom's
45-degree crossing, mirrored across the x = y plane, the bundle ``full`` keeps swaps with the
mirror (README, "The network is not equivariant").

For a group ``G`` of signed permutations ``R`` (a subgroup of the 48), every streamline runs
``|G|`` copies of the network, copy ``R`` on the turned input (the neighbourhood
``M patch[R^T o]``, the previous direction ``R d``, as :class:`.augment.GridSymmetries` turns
a training window; a GRU state of its own) and the move is

    d = normalize(sum_R R^T d_R)

With ``G`` a group each step is exactly equivariant to it: the scan, point and previous
direction turned by any ``R`` in ``G`` turn the direction. (Whole tracks turn too only where
the rest of the tracker does: seed directions come from a sphere that most symmetries do
not keep, and a flip of z swaps which half is tracked first.) The cost is ``|G|`` network
rows per streamline and step.

Two consequences of taking the mean:

- where the copies disagree (each choosing another branch of a crossing) the mean lies
  between their choices; the fODF guide, applied after, then moves it to the nearest peak;
- stochastic copies draw one noise ``e`` per streamline and copy ``R`` reads ``R e`` (so each
  step is equivariant in distribution), but the mean of ``|G|`` correlated samples spreads
  less than one sample: with many copies probabilistic tracking narrows towards the
  deterministic.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from ...errors import ConfigError
from .augment import grid_symmetries, grid_symmetries_for


def _indices(matrices: list[np.ndarray]) -> tuple[int, ...]:
    """Positions of ``matrices`` in :func:`.augment.grid_symmetries` (the identity first)."""
    all_ = grid_symmetries()
    return tuple(int(np.flatnonzero(np.all(np.isclose(all_, R), axis=(1, 2)))[0]) for R in matrices)


def _subgroups() -> dict[str, tuple[int, ...]]:
    """The groups ``--symmetries`` names: positions of their members in :func:`.augment.grid_symmetries`."""
    eye, swap = np.eye(3), np.array([[0.0, 1, 0], [1, 0, 0], [0, 0, 1]])
    flips = [np.diag(s) for s in ((1, 1, 1), (-1, -1, -1), (-1, 1, 1), (1, -1, 1), (1, 1, -1), (1, -1, -1),
                                   (-1, 1, -1), (-1, -1, 1))]     # (this order: the copies' sum, as measured)
    return {"none": (0,),
            "inversion": _indices([eye, -eye]),                        # the point reflection through the centre
            "swap": _indices([eye, swap]),                             # the x = y mirror
            "perms": _indices([np.eye(3)[list(p)] for p in itertools.permutations(range(3))]),   # the axes' 6 orders
            "flips": _indices(flips),                                  # the 8 sign patterns, order 8
            "all": tuple(range(len(grid_symmetries())))}


SUBGROUPS = _subgroups()


def check_symmetries(name: str, ddtracking: bool = True) -> str:
    """``name`` if it is one of :data:`SUBGROUPS` (and ``"none"`` for a rule without a network), else a ConfigError."""
    if name not in SUBGROUPS:
        raise ConfigError(f"unknown DDTracking symmetries {name!r}; choose one of {', '.join(SUBGROUPS)}")
    if name != "none" and not ddtracking:
        raise ConfigError("--symmetries only applies to --method ddtracking")
    return name


class Symmetries:
    """The copies of one step: turned inputs in, turned-back mean direction out.

    Rows come streamline-major: the ``K`` copies of streamline ``n`` are rows ``n K .. n K + K - 1``.
    """

    def __init__(self, name: str, n_coeffs: int, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32):
        self.name = check_symmetries(name)
        self.n_coeffs, self.index = n_coeffs, list(SUBGROUPS[name])
        table = grid_symmetries_for(n_coeffs)            # the training's turns, their matrices in float64
        self.R = torch.as_tensor(table.R[self.index], device=device, dtype=dtype)   # (K, 3, 3)
        self.M = table.M[self.index].to(device=device, dtype=dtype)               # (K, m, m)
        self.source = table.source[self.index].to(device)                         # (K, 27)

    def __len__(self) -> int:
        return len(self.index)

    def to(self, device, dtype: torch.dtype) -> Symmetries:
        """The same group on ``device`` in ``dtype`` (cast from the float64 table)."""
        return Symmetries(self.name, self.n_coeffs, device, dtype)

    def samples(self, x: Tensor) -> Tensor:
        """Channels-last neighbourhoods ``(N, 3, 3, 3, m)`` -> each copy's ``(N K, 3, 3, 3, m)``."""
        N, m = len(x), x.shape[-1]
        flat = x.reshape(N, 27, m)[:, self.source]                                  # (N, K, 27, m): patch[R^T o]
        return torch.einsum("nkom,kjm->nkoj", flat, self.M.to(x.dtype)).reshape(N * len(self), 3, 3, 3, m)

    def vectors(self, d: Tensor) -> Tensor:
        """``(N, ..., 3)`` -> ``R d`` for each copy, ``(N K, ..., 3)``."""
        turned = torch.einsum("kij,n...j->nk...i", self.R.to(d.dtype), d)
        return turned.reshape(len(d) * len(self), *d.shape[1:])

    def mean(self, d: Tensor) -> Tensor:
        """Each copy's direction ``(N K, 3)`` turned back and averaged: unit ``(N, 3)``."""
        back = torch.einsum("kji,nkj->nki", self.R.to(d.dtype), d.reshape(-1, len(self), 3))   # R^T d_R
        return F.normalize(back.sum(dim=1), dim=-1)
