"""The getter seam: what the tracker and the propagator ask of a direction source.

The tracker owns integration, stopping, the active set and writing; a getter only answers
"which way next" for every active streamline at once. Every member of :class:`Getter` is
required, so the loops call each hook directly and nothing is discovered at run time.
Stateless getters (the classical rules) inherit the state hooks from
:class:`StatelessGetter`; a getter with per-streamline state (DDTracking's GRU) writes its
own.

A *state* is whatever a getter keeps per streamline: ``None``, a tensor with one row per
streamline, or a dict of such tensors (and of shared things, such as a torch Generator, or
a list the getter appends to). The tracker selects its rows as streamlines stop, and hands
the forward half's initial state back to ``init_backward``: whatever the getter appended to
its shared members during the forward half is there (DDTracking keeps each step's spatial
encodings, so the backward half's start need not compute them again).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor

State = Any    # None, a (S, ...) tensor, or a dict of them (see the module docstring)


class Getter(Protocol):
    """A direction source for :class:`~.tracker.Tracker` and :func:`~difftract.learn.propagate`."""

    name: str
    """The method's name, as the CLI spells it (``det``, ``ddtracking``)."""
    cos_max_angle: float
    """The cone: cosine of the largest turn per step, also the RK curvature check."""

    def to(self, device: torch.device | str, dtype: torch.dtype) -> Getter:
        """A copy on ``device`` in ``dtype``."""
        ...

    def seed_directions(self, seeds: Tensor) -> tuple[Tensor, Tensor]:
        """Initial directions ``(M, 3)`` and the seed of each ``(M,)``: zero, one or several per seed
        (a seed without one gives no streamline)."""
        ...

    def init(self, seeds: Tensor, first_dirs: Tensor, generator: torch.Generator | None = None) -> State:
        """The state of streamlines starting at ``seeds (S, 3)`` along ``first_dirs (S, 3)``."""
        ...

    def init_backward(self, seeds: Tensor, first_dirs: Tensor, forward_points: Tensor, forward_count: Tensor,
                      generator: torch.Generator | None = None, forward_state: State = None) -> State:
        """The state of the backward halves, which start at ``seeds`` along ``first_dirs`` once the forward
        halves ``forward_points (S, T, 3)`` (step 1 first, ``forward_count (S,)`` points each) are known;
        ``forward_state`` is what :meth:`init` returned for the forward halves, after they ran."""
        ...

    def directions(self, points: Tensor, prev_dirs: Tensor, state: State) -> tuple[Tensor, Tensor, State]:
        """Unit directions ``(N, 3)`` in the voxel frame agreeing in sign with ``prev_dirs``, where one
        exists ``(N,)`` bool, and the updated state."""
        ...

    def bytes_per_seed(self, dtype_bytes: int) -> int:
        """Working memory of one streamline's query, from which the tracker sizes its chunks."""
        ...

    def bytes_per_point(self, dtype_bytes: int) -> int:
        """Memory the getter keeps per point of a forward half until the backward half starts."""
        ...


class StatelessGetter:
    """The state hooks of a getter that keeps nothing per streamline (subclasses add the rest).

    ``init`` returns ``None`` and the backward half starts like the forward one, from
    ``init``; a getter that needs only a shared generator overrides ``init`` alone.
    """

    name: str
    cos_max_angle: float

    def init(self, seeds: Tensor, first_dirs: Tensor, generator: torch.Generator | None = None) -> State:
        return None

    def init_backward(self, seeds: Tensor, first_dirs: Tensor, forward_points: Tensor, forward_count: Tensor,
                      generator: torch.Generator | None = None, forward_state: State = None) -> State:
        return self.init(seeds, first_dirs, generator)

    def bytes_per_point(self, dtype_bytes: int) -> int:
        return 0
