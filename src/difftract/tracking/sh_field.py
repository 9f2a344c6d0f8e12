"""An SH field (an fODF, descoteaux07) read as a pmf on a sphere at continuous points.

DIPY's ``SHCoeffPmfGen`` rule: the SH coefficients are interpolated trilinearly (not the
ODF), then sampled on the sphere's vertices, ``pmf = B @ c``; outside the grid the pmf is
zero. Inside a tracking step, values below ``pmf_threshold * max(0, max pmf)`` are set to
zero (which also clears every negative value). The sphere defaults to DIPY's
``default_sphere`` (362 vertices of a hemisphere: orientations, not directions).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from dipy.core.sphere import Sphere

from ..errors import ConfigError
from ..reconst.peaks import close_pairs, default_sphere, find_peaks, sphere_neighbours
from ..reconst.sh import lmax_from_ncoeffs, sh_basis
from .interpolate import grid_volume, trilinear


class SHField:
    """The pmf of an SH volume on a sphere, batched over points.

    Parameters
    ----------
    coeffs : array or Tensor, (X, Y, Z, n_coeffs)
        descoteaux07 coefficients in the data-array frame.
    legacy : bool
        Whether the coefficients use DIPY's legacy basis (DIPY's and scilpy's default).
    sphere : dipy Sphere, optional
        Directions the pmf is sampled on; DIPY's ``default_sphere`` by default.
    pmf_threshold : float
        Relative threshold applied in every step (DIPY's default 0.1).
    """

    def __init__(self, coeffs, legacy: bool, sphere: Sphere | None = None, pmf_threshold: float = 0.1,
                 min_separation_angle: float = 25.0):
        coeffs = grid_volume(coeffs)      # C order once: a NIfTI array's F order would be copied every step
        if coeffs.dim() != 4:
            raise ConfigError(f"an SH field must be (X, Y, Z, n_coeffs), got shape {tuple(coeffs.shape)}")
        try:
            self.lmax = lmax_from_ncoeffs(coeffs.shape[-1])
        except ValueError as err:
            raise ConfigError(f"SH field: {err}") from None
        if not 0.0 <= pmf_threshold < 1.0:
            raise ConfigError(f"pmf_threshold must be in [0, 1), got {pmf_threshold}")
        self.legacy = bool(legacy)
        self.pmf_threshold = float(pmf_threshold)
        self.sphere = default_sphere() if sphere is None else sphere
        vertices = np.asarray(self.sphere.vertices, dtype=np.float64)
        B, _ = sh_basis(vertices, self.lmax, self.legacy)
        self.coeffs = coeffs
        self.basis_t = torch.as_tensor(B.T.copy())                  # (n_coeffs, V)
        self.vertices = torch.as_tensor(vertices)                   # (V, 3)
        self.neighbours = torch.as_tensor(sphere_neighbours(self.sphere.edges, len(vertices)))
        self.close = torch.as_tensor(close_pairs(vertices, min_separation_angle))
        self._buffers: dict[str, torch.Tensor] = {}
        self._table: OrientationTable | None = None      # built by the first climb

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.coeffs.shape[:3])

    def to(self, device: torch.device | str, dtype: torch.dtype) -> SHField:
        """A copy with its tensors on ``device`` in ``dtype`` (the coefficients keep their graph)."""
        out = object.__new__(SHField)
        out.__dict__.update(self.__dict__)
        out.coeffs = self.coeffs.to(device=device, dtype=dtype)
        out.basis_t = self.basis_t.to(device=device, dtype=dtype)
        out.vertices = self.vertices.to(device=device, dtype=dtype)
        out.neighbours = self.neighbours.to(device)
        out.close = self.close.to(device)
        out._buffers = {}
        out._table = None
        return out

    def buffer(self, name: str, rows: int) -> torch.Tensor:
        """A reusable ``(rows, V)`` scratch array (a view of one that grows as needed).

        Tracking steps on a CPU are bound by memory traffic, and a fresh (N, V) array
        each step costs as much as the arithmetic (the allocator returns large blocks to
        the system, so every step page-faults them in again).
        """
        buf = self._buffers.get(name)
        if buf is None or buf.shape[0] < rows:
            buf = torch.empty(rows, self.basis_t.shape[1], dtype=self.basis_t.dtype, device=self.basis_t.device)
            self._buffers[name] = buf
        return buf[:rows]

    def pmf(self, points: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The raw pmf ``(N, V)`` at ``points`` ``(N, 3)`` (voxel coordinates); zero off the grid.

        ``out`` (a :meth:`buffer`) receives it without autograd; without it the result
        keeps the graph to the coefficients.
        """
        coeffs, _ = trilinear(self.coeffs, points)
        return coeffs @ self.basis_t if out is None else torch.mm(coeffs, self.basis_t, out=out)

    def thresholded(self, pmf: torch.Tensor) -> torch.Tensor:
        """Zero the values below ``pmf_threshold`` times the (non-negative) maximum."""
        top = pmf.max(dim=1, keepdim=True).values.clamp(min=0)
        return torch.where(pmf < self.pmf_threshold * top, torch.zeros_like(pmf), pmf)

    def peaks(self, points: torch.Tensor, relative_peak_threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
        """The peaks of the thresholded pmf at ``points``: directions ``(N, K, 3)`` and which are present ``(N, K)``.

        Local maxima on the sphere at least ``relative_peak_threshold`` of the largest and
        ``min_separation_angle`` apart, largest first (DIPY's ``peak_directions``); ``K`` is the
        most any point has (at least 1).
        """
        index, _ = find_peaks(self.thresholded(self.pmf(points)), self.neighbours, self.close,
                              relative_peak_threshold, self.vertices.shape[0])
        width = max(int((index >= 0).sum(dim=1).max()), 1) if len(index) else 1
        index = index[:, :width]
        return self.vertices[index.clamp(min=0)], index >= 0

    def closest_peak(self, points: torch.Tensor, dirs: torch.Tensor, relative_peak_threshold: float = 0.5
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """The peak nearest each of ``dirs (N, 3)`` at ``points``, with the sign of ``dirs``, and ``|cos|`` to it.

        ``|cos|`` is -1 where the point has no peak (the peak returned there is then meaningless).
        """
        peaks, present = self.peaks(points, relative_peak_threshold)
        dots = (peaks * dirs[:, None, :]).sum(dim=-1)                               # (N, K)
        near = torch.where(present, dots.abs(), torch.full_like(dots, -1.0))
        best = near.argmax(dim=1, keepdim=True)
        peak = peaks.gather(1, best[..., None].expand(-1, -1, 3))[:, 0]
        return torch.where(dots.gather(1, best) < 0, -peak, peak), near.gather(1, best)[:, 0]

    def climbed_peak(self, points: torch.Tensor, dirs: torch.Tensor, relative_peak_threshold: float = 0.5,
                     max_hops: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
        """The peak whose basin holds each of ``dirs (N, 3)``: :meth:`closest_peak`'s answer at a fraction of its cost.

        From the vertex nearest each direction, step to the largest neighbour while it is
        larger (at most ``max_hops``). The vertex reached is a peak when it is at least
        ``relative_peak_threshold`` of the largest value above the thresholded pmf's floor,
        as in :meth:`peaks`; it is returned with the sign of ``dirs`` and ``|cos|`` to it
        (-1 where the climb ends on no such peak, or has not ended).

        Only the vertices on the way are compared, where :meth:`peaks` finds every local
        maximum of the sphere, sorts them and merges close pairs: that pass is most of a
        guided DDTracking step's extra cost. The answers differ where the direction lies
        in one peak's basin but nearer another (two peaks about 45 degrees apart), and
        where a small maximum within ``min_separation_angle`` of a larger one (which
        :meth:`peaks` merges into it) holds the direction: on brain-phantom points with
        directions up to 25 degrees from a peak, 0.5% of answers. On a GPU every hop runs
        (a climb that has ended stays put), so no step waits for the host.
        """
        pmf = self.pmf(points, out=self.buffer("climb", points.shape[0]))
        low, top = pmf.amin(dim=1), pmf.amax(dim=1)                # (6x faster than aminmax on a CPU)
        # the floor of the thresholded pmf: its minimum, which is 0 unless nothing was cleared
        floor = torch.where(low >= self.pmf_threshold * top.clamp(min=0), low, torch.zeros_like(low)).clamp(min=0)
        if self._table is None:
            self._table = OrientationTable(self.vertices)
        at = self._table.nearest(dirs)
        value = pmf.gather(1, at[:, None])[:, 0]
        rising = torch.ones_like(value, dtype=torch.bool)
        for _ in range(max_hops):
            around = self.neighbours[at]                                # (N, d)
            best, which = pmf.gather(1, around).max(dim=1)
            rising = best > value
            # a climb that has ended stays put, so a GPU runs every hop rather than wait for the host
            if points.device.type == "cpu" and not bool(rising.any()):
                break
            at = torch.where(rising, around.gather(1, which[:, None])[:, 0], at)
            value = torch.maximum(value, best)
        peak = self.vertices[at]
        dots = (peak * dirs).sum(dim=-1)
        # a maximum of the thresholded pmf: not cleared by pmf_threshold, and large enough above its floor
        is_peak = (~rising & (value > floor) & (value >= self.pmf_threshold * top.clamp(min=0))
                   & (value - floor >= relative_peak_threshold * (top - floor)))
        return (torch.where(dots[:, None] < 0, -peak, peak),
                torch.where(is_peak, dots.abs(), torch.full_like(dots, -1.0)))

    def bytes_per_query(self, dtype_bytes: int) -> int:
        """Working memory of one point's pmf query: the pmf on the sphere with its masks (about four
        V-vectors) and the 8 corners' SH."""
        V, C = self.vertices.shape[0], self.basis_t.shape[0]
        return V * (4 * dtype_bytes + 2) + 8 * C * dtype_bytes


class OrientationTable:
    """The sphere vertex nearest each orientation, read from a table instead of searched.

    The orientations (directions up to sign) are binned by polar and azimuthal angle,
    ``bins_per_degree`` bins per degree, and each bin holds the vertex nearest its centre
    (largest ``|cos|``). A lookup is a few operations per direction where the search is a
    product with every vertex and an argmax (a fifth of a climb's cost). The vertex read
    is the nearest one except within about half a bin of where two vertices are equally
    near, and then it is that neighbour (at most 1.4 degrees further at 1 bin per degree).

    Parameters
    ----------
    vertices : Tensor (V, 3)
        Unit vectors, each standing for itself and its antipode.
    bins_per_degree : int
        Table resolution (90 x 360 bins at 1).
    """

    def __init__(self, vertices: torch.Tensor, bins_per_degree: int = 1):
        self.n_theta, self.n_phi = 90 * bins_per_degree, 360 * bins_per_degree
        theta = (torch.arange(self.n_theta, dtype=torch.float64) + 0.5) * (math.pi / 2 / self.n_theta)
        phi = (torch.arange(self.n_phi, dtype=torch.float64) + 0.5) * (2 * math.pi / self.n_phi) - math.pi
        t, p = torch.meshgrid(theta, phi, indexing="ij")
        centres = torch.stack([t.sin() * p.cos(), t.sin() * p.sin(), t.cos()], dim=-1).reshape(-1, 3)
        v = vertices.detach().to("cpu", torch.float64)
        table = torch.cat([(part @ v.T).abs().argmax(dim=1) for part in centres.split(8192)])
        self.table = table.reshape(self.n_theta, self.n_phi).to(vertices.device)

    def nearest(self, dirs: torch.Tensor) -> torch.Tensor:
        """Vertex indices ``(N,)`` of unit ``dirs (N, 3)``."""
        up = torch.where(dirs[:, 2:] < 0, -dirs, dirs)                    # the orientation with z >= 0
        theta = torch.acos(up[:, 2].clamp(max=1.0))
        phi = torch.atan2(up[:, 1], up[:, 0])
        i = (theta * (self.n_theta / (math.pi / 2))).long().clamp_(0, self.n_theta - 1)
        j = ((phi + math.pi) * (self.n_phi / (2 * math.pi))).long().clamp_(0, self.n_phi - 1)
        return self.table[i, j]
