"""Direction getters: which way each active streamline goes next, all at once.

The tracker owns integration, stopping, the active set and writing; a getter only
answers "which way next" (DESIGN's seam). Every getter satisfies
:class:`~.getter_protocol.Getter` (name, cone, ``to``, ``seed_directions``, ``init``,
``init_backward``, ``directions``, ``bytes_per_seed``, ``bytes_per_point``); the classical ones below keep no
per-streamline state and take their state hooks from
:class:`~.getter_protocol.StatelessGetter`.

The classical rules are DIPY 1.12's (``docs/dev/dipy_tracking.md``):

=========  ==================================================================================
det        the thresholded pmf's largest value with ``|cos| > cos(max_angle)`` to the previous
           direction; seeds start along the highest local maximum of the raw pmf.
prob       a vertex drawn from the thresholded pmf restricted to ``|cos| >= cos(max_angle)``.
closest    the peak (local maxima of the thresholded pmf, 0.5 relative threshold, 25 degrees
           apart) closest to the previous direction, if within the cone; every seed peak
           starts a streamline.
peak       the differentiable EuDX-style blend of per-voxel peaks (:mod:`.peak_field`).
=========  ==================================================================================
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError
from ..reconst.peaks import local_maxima
from .getter_protocol import Getter, StatelessGetter
from .integrators import normalize
from .interpolate import nearest
from .peak_field import PeakField
from .sh_field import SHField

METHODS = ("det", "prob", "closest", "peak")
_FAR = 1e30     # pushes values out of the cone below any pmf value (float32 and float64)


def _cos(max_angle: float) -> float:
    if not 0.0 < max_angle <= 90.0:
        raise ConfigError(f"max_angle must be in (0, 90] degrees, got {max_angle}")
    return math.cos(math.radians(max_angle))


class _SHGetter(StatelessGetter):
    """Shared parts of the getters that read an :class:`SHField`."""

    def __init__(self, field: SHField, max_angle: float):
        self.field = field
        self.max_angle = float(max_angle)
        self.cos_max_angle = _cos(max_angle)

    def to(self, device, dtype):
        out = object.__new__(type(self))
        out.__dict__.update(self.__dict__)
        out.field = self.field.to(device, dtype)
        return out

    def bytes_per_seed(self, dtype_bytes: int) -> int:
        """The pmf on the sphere with its cone key and masks, and the 8 corners' SH."""
        return self.field.bytes_per_query(dtype_bytes)

    def seed_directions(self, seeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The highest local maximum of the raw pmf at each seed (DIPY's det/prob rule).

        Seeds with no local maximum (off the grid, a flat pmf) are dropped; when every
        maximum is negative DIPY returns vertex 0, and so does this.
        """
        f = self.field
        pmf = f.pmf(seeds)
        is_max = local_maxima(pmf, f.neighbours)
        key = torch.where(is_max, pmf, torch.full_like(pmf, -torch.inf))
        best = key.argmax(dim=1)                                    # ties: the lowest vertex index
        top = key.gather(1, best[:, None])[:, 0]
        best = torch.where(top < 0, torch.zeros_like(best), best)
        has = is_max.any(dim=1)
        index = torch.nonzero(has)[:, 0]
        return f.vertices[best[index]], index

    def _pmf_and_cone(self, points, prev_dirs, strict: bool):
        """The raw pmf, its (non-negative) maximum, the unit previous directions, and the cone.

        ``outside`` is 0 inside the cone and -1 or -2 outside (``|cos| > c`` when
        ``strict``, else ``>=``), computed in place: on a CPU these (N, V) passes are the
        cost of a step, and fresh allocations double it.
        """
        f, n = self.field, len(points)
        pmf = f.pmf(points, out=f.buffer("pmf", n))
        top = pmf.amax(dim=1).clamp(min=0)
        prev = normalize(prev_dirs)
        outside = torch.mm(prev, f.vertices.T, out=f.buffer("cone", n)).abs_()   # (N, V) |cos|
        outside.sub_(self.cos_max_angle).sign_()                    # 1 inside, 0 on the rim, -1 outside
        outside.sub_(1) if strict else outside.clamp_(max=0)        # strict: the rim is outside too
        return pmf, top, prev, outside

    def _vertex(self, index, prev):
        """Vertices ``index`` flipped to agree with ``prev`` (kept when the cosine is positive)."""
        v = self.field.vertices.index_select(0, index)
        return torch.where(((v * prev).sum(dim=1) > 0)[:, None], v, -v)


class DeterministicGetter(_SHGetter):
    """DIPY's deterministic-maximum rule over an SH field.

    Equivalent to thresholding then taking the first maximum in the cone: the cone's
    largest raw value ``v`` survives the threshold iff ``v >= pmf_threshold * max(0, max
    pmf)``, and then no other value in the cone exceeds it.
    """

    name = "det"

    @torch.no_grad()
    def directions(self, points, prev_dirs, state):
        pmf, top, prev, outside = self._pmf_and_cone(points, prev_dirs, strict=True)
        pmf.add_(outside, alpha=_FAR)                               # out of the cone: hugely negative
        value, best = pmf.max(dim=1)                                # the first maximum, as DIPY's strict >
        valid = (value > 0) & (value >= self.field.pmf_threshold * top)
        return self._vertex(best, prev), valid, state


class ProbabilisticGetter(_SHGetter):
    """DIPY's probabilistic rule: a vertex drawn from the pmf within the cone.

    The draws come from the torch Generator handed to :meth:`init` (the tracker gives each
    chunk of seeds its own, derived from ``--seed``); DIPY's per-seed PCG32 stream is not
    reproduced, so single streamlines differ from DIPY's while their distribution does not.
    """

    name = "prob"

    def init(self, seeds, first_dirs, generator=None):
        if generator is None:
            raise ConfigError("the probabilistic getter needs a torch.Generator")
        return {"generator": generator}

    @torch.no_grad()
    def directions(self, points, prev_dirs, state):
        pmf, top, prev, outside = self._pmf_and_cone(points, prev_dirs, strict=False)
        pmf.masked_fill_(pmf < (self.field.pmf_threshold * top)[:, None], 0.0)
        pmf.add_(outside, alpha=_FAR).clamp_(min=0)                 # zero outside the cone
        cdf = torch.cumsum(pmf, dim=1, out=self.field.buffer("cone", len(points)))
        total = cdf[:, -1]
        u = torch.rand(len(points), generator=state["generator"], device=points.device, dtype=points.dtype) * total
        pick = torch.searchsorted(cdf, u[:, None], right=True)[:, 0].clamp(max=cdf.shape[1] - 1)
        return self._vertex(pick, prev), total > 0, state


class ClosestPeakGetter(_SHGetter):
    """DIPY's closest-peak rule: peaks of the thresholded pmf, the one nearest the previous direction."""

    name = "closest"

    def __init__(self, field: SHField, max_angle: float, relative_peak_threshold: float = 0.5):
        super().__init__(field, max_angle)
        self.relative_peak_threshold = float(relative_peak_threshold)

    def seed_directions(self, seeds):
        """Every peak of each seed, in peak order (one streamline each)."""
        peaks, present = self.field.peaks(seeds, self.relative_peak_threshold)
        seed_index = torch.nonzero(present)[:, 0]                   # row-major: by seed, then peak
        return peaks[present], seed_index

    def directions(self, points, prev_dirs, state):
        peak, cos = self.field.closest_peak(points, prev_dirs, self.relative_peak_threshold)
        return peak, cos >= self.cos_max_angle, state       # cos is -1 where there is no peak


class PeakGetter(StatelessGetter):
    """The differentiable ``peak`` rule over a per-voxel peak field (see :class:`PeakField`).

    Seeds start along the largest peak of their nearest voxel, refined by the blend there.
    """

    name = "peak"

    def __init__(self, peaks: torch.Tensor, max_angle: float):
        self.max_angle = float(max_angle)
        self.cos_max_angle = _cos(max_angle)
        self.field = PeakField(torch.as_tensor(peaks), max_angle=max_angle)

    def to(self, device, dtype):
        return PeakGetter(self.field.peaks.to(device=device, dtype=dtype), self.max_angle)

    def bytes_per_seed(self, dtype_bytes: int) -> int:
        """The 8 corners' peaks, their alignment and blend weights: a peak lookup is cheap."""
        npeaks = self.field.peaks.shape[-2]
        return 8 * npeaks * 6 * dtype_bytes

    def seed_directions(self, seeds):
        first = self.field.peaks[..., 0, :]
        reference, on_grid = nearest(first, seeds)
        has = on_grid & (torch.linalg.vector_norm(reference, dim=-1) > 0)
        dirs, valid = self.field(seeds, normalize(reference))
        index = torch.nonzero(has & valid)[:, 0]
        return dirs[index], index

    def directions(self, points, prev_dirs, state):
        dirs, valid = self.field(points, prev_dirs)      # already blended to agree with prev_dirs
        return dirs, valid, state


def make_getter(method: str, *, sh: SHField | None = None, peaks: torch.Tensor | None = None,
                max_angle: float = 45.0) -> Getter:
    """The getter for ``method`` (det, prob, closest: an SH field; peak: a peak field)."""
    if method not in METHODS:
        raise ConfigError(f"unknown tracking method {method!r}; expected one of {', '.join(METHODS)}")
    if method == "peak":
        if peaks is None:
            raise ConfigError("the peak getter needs a peak field")
        return PeakGetter(peaks, max_angle)
    if sh is None:
        raise ConfigError(f"the {method} getter needs an SH field")
    cls = {"det": DeterministicGetter, "prob": ProbabilisticGetter, "closest": ClosestPeakGetter}[method]
    return cls(sh, max_angle)
