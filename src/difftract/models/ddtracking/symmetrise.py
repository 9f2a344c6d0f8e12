"""DDTracking's direction averaged over a group of the voxel grid's symmetries (test-time symmetrisation).

A network trained with the 48 grid symmetries (:mod:`.augment`) is equivariant only as far as
it learnt to be. Measured one step at a time along the true streamlines of a phantom (the
network fed the true past), the shipped networks' direction for a turned input, turned back,
differs from their direction for the input by a median 4.7 (``fast``) to 6.2 (``full``)
degrees, about their whole median error against the truth. Where the fODF shows one peak
for two crossing bundles, the choice between them then follows the bundles' orientation to
the grid axes, not the streamline's past: on the foreign phantom's 45-degree crossing,
mirrored across the x = y plane, the bundle ``full`` keeps swaps with the mirror (README,
"Learned tracking").

For a group ``G`` of signed permutations ``R`` (a subgroup of the 48), every streamline runs
``|G|`` copies of the network, copy ``R`` on the turned input (:class:`.augment.GridSymmetries`:
the neighbourhood ``M patch[R^T o]``, the previous direction ``R d``, its own GRU state) and
the move is

    d = normalize(sum_R R^T d_R)

With ``G`` a group the rule is exactly equivariant to it: turning the scan by any ``R`` in
``G`` turns the tracks. Stochastic copies draw one noise ``e`` per streamline and copy ``R``
reads ``R e``, so the noise turns with the input too. The cost is ``|G|`` network rows per
streamline and step.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from ...errors import ConfigError
from ...reconst.sh import lmax_from_ncoeffs
from .augment import grid_symmetries, grid_symmetries_for, sh_matrix


def _indices(matrices: list[np.ndarray]) -> tuple[int, ...]:
    """Positions of ``matrices`` in :func:`.augment.grid_symmetries` (the identity first)."""
    all_ = grid_symmetries()
    return tuple(int(np.flatnonzero(np.all(np.isclose(all_, R), axis=(1, 2)))[0]) for R in matrices)


def _subgroups() -> dict[str, tuple[int, ...]]:
    eye, swap = np.eye(3), np.array([[0.0, 1, 0], [1, 0, 0], [0, 0, 1]])
    flips = [np.diag(s) for s in ((1, 1, 1), (-1, -1, -1), (-1, 1, 1), (1, -1, 1), (1, 1, -1), (1, -1, -1),
                                   (-1, 1, -1), (-1, -1, 1))]
    return {"none": (0,),
            "inversion": _indices([eye, -eye]),                        # d -> -d: the streamline read backwards
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

    def __init__(self, name: str, n_coeffs: int, device=None, dtype: torch.dtype = torch.float32):
        self.name = check_symmetries(name)
        index = list(SUBGROUPS[name])
        table = grid_symmetries_for(n_coeffs)
        lmax = lmax_from_ncoeffs(n_coeffs)
        self.R = torch.as_tensor(table.R[index], device=device, dtype=dtype)       # (K, 3, 3)
        # made again in float64 (the table's are float32, for training): exact to the scan's rounding
        self.M = torch.as_tensor(np.stack([sh_matrix(R, lmax) for R in table.R[index]]), device=device, dtype=dtype)
        self.source = table.source[index].to(device)                                # (K, 27)

    def __len__(self) -> int:
        return len(self.R)

    def to(self, device, dtype: torch.dtype) -> Symmetries:
        out = object.__new__(type(self))
        out.name = self.name
        out.R, out.M = self.R.to(device=device, dtype=dtype), self.M.to(device=device, dtype=dtype)
        out.source = self.source.to(device)
        return out

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
