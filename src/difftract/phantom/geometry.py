"""Bundle geometry: tubes around smooth centrelines, and the streamlines inside them.

A bundle is a centreline (a cubic spline through control points, in mm) carrying a
frame (T, N1, N2) and an elliptical cross-section whose half-axes r1(s), r2(s) vary
along the arc length s. A fibre is a fixed relative position (u1, u2) in the unit disc:

    x(s) = c(s) + u1 r1(s) N1(s) + u2 r2(s) N2(s)

so fibres follow the centreline and fan out where the radius grows. The same
parametrisation gives the ground-truth streamlines and, through :meth:`Tube.locate`,
the local fibre direction at any point of space, so the signal and the streamlines
agree by construction.

Coordinates here are "array mm": voxel index times voxel size, origin at the centre of
voxel (0, 0, 0). The image affine is applied only when files are written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.interpolate import make_interp_spline
from scipy.spatial import cKDTree

GOLDEN_ANGLE = np.pi * (3.0 - np.sqrt(5.0))


@dataclass
class Bundle:
    """A bundle's shape.

    Attributes
    ----------
    name : str
        Used for file names (``gt/bundles/NAME.trk``).
    points : (K, 3) array
        Centreline control points in array mm, K >= 2.
    radius : sequence of float
        Half-width along N1 in mm, at evenly spaced fractions of the length (linear in
        between); one value for a constant radius, a growing profile for a fan.
    thickness : sequence of float or None
        Half-width along N2 in mm; None for a circular cross-section.
    normal : (3,) array or None
        Fixed direction for N2 (e.g. the slab normal of an in-plane bundle); None for a
        rotation-minimising frame.
    n_streamlines : int
        Ground-truth streamlines to draw.
    """

    name: str
    points: np.ndarray
    radius: tuple[float, ...] = (3.0,)
    thickness: tuple[float, ...] | None = None
    normal: np.ndarray | None = None
    n_streamlines: int = 200

    def __post_init__(self):
        self.points = np.asarray(self.points, dtype=np.float64)
        self.radius = tuple(float(r) for r in np.atleast_1d(self.radius))
        if self.thickness is not None:
            self.thickness = tuple(float(r) for r in np.atleast_1d(self.thickness))
        if self.normal is not None:
            self.normal = np.asarray(self.normal, dtype=np.float64)


@dataclass
class Tube:
    """A bundle sampled densely along its arc length (built by :func:`make_tube`)."""

    bundle: Bundle
    s: np.ndarray          # (M,) arc length, mm
    centre: np.ndarray     # (M, 3)
    tangent: np.ndarray    # (M, 3)
    n1: np.ndarray         # (M, 3)
    n2: np.ndarray         # (M, 3)
    r1: np.ndarray         # (M,)
    r2: np.ndarray         # (M,)
    tree: cKDTree = field(repr=False)

    @property
    def length(self) -> float:
        return float(self.s[-1])

    def fibres(self, u: np.ndarray) -> np.ndarray:
        """Points of the fibres at unit-disc positions ``u`` (F, 2): shape (F, M, 3)."""
        u = np.asarray(u, dtype=np.float64)
        return (self.centre[None] + (u[:, 0, None, None] * self.r1[None, :, None]) * self.n1[None]
                + (u[:, 1, None, None] * self.r2[None, :, None]) * self.n2[None])

    def locate(self, points: np.ndarray) -> dict[str, np.ndarray]:
        """Where points of space sit relative to the tube.

        Returns a dict of arrays over the P points: ``inside`` (bool), ``index`` (nearest
        centreline sample), ``s`` (arc length, mm), ``u`` (P, 2) unit-disc position, and
        ``direction`` (P, 3) the unit direction of the fibre through the point (valid
        where ``inside``).
        """
        points = np.asarray(points, dtype=np.float64)
        _, idx = self.tree.query(points)
        offset = points - self.centre[idx]
        along = np.einsum("pk,pk->p", offset, self.tangent[idx])
        u = np.stack([np.einsum("pk,pk->p", offset, self.n1[idx]) / self.r1[idx],
                      np.einsum("pk,pk->p", offset, self.n2[idx]) / self.r2[idx]], axis=1)
        ds = self.s[1] - self.s[0]
        beyond_cap = ((idx == 0) | (idx == len(self.s) - 1)) & (np.abs(along) > ds)
        inside = (np.sum(u**2, axis=1) <= 1.0) & ~beyond_cap
        lo = np.clip(idx - 1, 0, len(self.s) - 1)
        hi = np.clip(idx + 1, 0, len(self.s) - 1)
        step = self._point(hi, u) - self._point(lo, u)
        direction = step / np.maximum(np.linalg.norm(step, axis=1, keepdims=True), 1e-12)
        return {"inside": inside, "index": idx, "s": self.s[idx], "u": u, "direction": direction}

    def _point(self, idx: np.ndarray, u: np.ndarray) -> np.ndarray:
        return (self.centre[idx] + (u[:, 0] * self.r1[idx])[:, None] * self.n1[idx]
                + (u[:, 1] * self.r2[idx])[:, None] * self.n2[idx])


def make_tube(bundle: Bundle, ds: float = 0.1) -> Tube:
    """Sample a bundle's centreline every ``ds`` mm with its frame and radii."""
    pts = bundle.points
    if len(pts) < 2:
        raise ValueError(f"bundle {bundle.name!r} needs at least 2 control points")
    chord = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    spline = make_interp_spline(chord, pts, k=min(3, len(pts) - 1))
    t = np.linspace(0.0, chord[-1], max(200, int(chord[-1] / ds) * 4))
    dense = spline(t)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(dense, axis=0), axis=1))])
    s = np.arange(0.0, arc[-1] + 1e-9, ds)
    s[-1] = min(s[-1], arc[-1])
    centre = spline(np.interp(s, arc, t))
    tangent = np.gradient(centre, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    n1, n2 = _frame(centre, tangent, bundle.normal)
    frac = s / s[-1]
    r1 = _profile(bundle.radius, frac)
    r2 = r1 if bundle.thickness is None else _profile(bundle.thickness, frac)
    return Tube(bundle, s, centre, tangent, n1, n2, r1, r2, cKDTree(centre))


def _profile(values: tuple[float, ...], frac: np.ndarray) -> np.ndarray:
    return np.interp(frac, np.linspace(0.0, 1.0, len(values)), values)


def _frame(centre: np.ndarray, tangent: np.ndarray, normal: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """N1, N2 completing the tangent: a fixed N2 direction, or a rotation-minimising frame."""
    if normal is not None:
        n2 = normal[None] - np.einsum("mk,k->m", tangent, normal)[:, None] * tangent
        n2 /= np.linalg.norm(n2, axis=1, keepdims=True)
        return np.cross(n2, tangent), n2
    # Double-reflection rotation-minimising frame (Wang et al. 2008), seeded perpendicular to T0.
    seed = np.eye(3)[np.argmin(np.abs(tangent[0]))]
    n1 = np.empty_like(tangent)
    n1[0] = np.cross(tangent[0], seed)
    n1[0] /= np.linalg.norm(n1[0])
    for i in range(len(tangent) - 1):
        n1[i + 1] = _reflect_step(centre, tangent, n1, i)
    return n1, np.cross(tangent, n1)


def _reflect_step(centre: np.ndarray, tangent: np.ndarray, n1: np.ndarray, i: int) -> np.ndarray:
    """Carry N1 from sample i to i+1: reflect in the bisector of the chord, then of the tangents."""
    v1 = centre[i + 1] - centre[i]
    c1 = v1 @ v1
    r_l = n1[i] - (2.0 / c1) * (v1 @ n1[i]) * v1
    t_l = tangent[i] - (2.0 / c1) * (v1 @ tangent[i]) * v1
    v2 = tangent[i + 1] - t_l
    c2 = v2 @ v2
    out = r_l if c2 < 1e-18 else r_l - (2.0 / c2) * (v2 @ r_l) * v2
    return out / np.linalg.norm(out)


def disc_positions(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` evenly spread positions in the unit disc (a sunflower pattern, random rotation)."""
    k = np.arange(n) + 0.5
    r = np.sqrt(k / n)
    theta = k * GOLDEN_ANGLE + rng.uniform(0.0, 2.0 * np.pi)
    return np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)
