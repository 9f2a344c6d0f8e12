"""An SH field (an fODF, descoteaux07) read as a pmf on a sphere at continuous points.

DIPY's ``SHCoeffPmfGen`` rule: the SH coefficients are interpolated trilinearly (not the
ODF), then sampled on the sphere's vertices, ``pmf = B @ c``; outside the grid the pmf is
zero. Inside a tracking step, values below ``pmf_threshold * max(0, max pmf)`` are set to
zero (which also clears every negative value). The sphere defaults to DIPY's
``default_sphere`` (362 vertices of a hemisphere: orientations, not directions).
"""

from __future__ import annotations

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

    def bytes_per_query(self, dtype_bytes: int) -> int:
        """Working memory of one point's pmf query: the pmf on the sphere with its masks (about four
        V-vectors) and the 8 corners' SH."""
        V, C = self.vertices.shape[0], self.basis_t.shape[0]
        return V * (4 * dtype_bytes + 2) + 8 * C * dtype_bytes
