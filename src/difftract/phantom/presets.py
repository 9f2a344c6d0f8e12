"""Phantom layouts: ``fibercup``, ``fibercup-moved``, ``crossing`` and ``random`` (``brain``: :mod:`.brain`;
``brain-random``: :mod:`.brain_random`).

Each preset returns a :class:`Layout`: the grid, the tissue domain (the brain mask) and
the bundles, all in array mm (see :mod:`.geometry`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import ConfigError
from .geometry import Bundle, Tube, make_tube

Z = np.array([0.0, 0.0, 1.0])
# Presets that take any voxel size from 1.25 to 2.5 mm: crossing and random keep their grid
# shape and the geometry scales with it; the brain presets resample the template and keep
# their geometry in mm. Fibercup's 120 mm disc needs its 2 mm voxels on a 64-voxel grid.
SCALABLE_PRESETS = ("crossing", "random", "brain", "brain-random")
PRESETS = ("fibercup", "fibercup-moved", "crossing", "random", "brain", "brain-random")


@dataclass
class Layout:
    """A phantom's geometry before any signal.

    Attributes
    ----------
    shape : (3,) ints
        Grid size in voxels.
    voxel_size : float
        Isotropic voxel edge, mm.
    bundles : list of Bundle
    domain : callable
        ``domain(points_mm) -> bool array``: inside the phantom's tissue (the brain mask).
    origin : (3,) array or None
        World mm of the centre of voxel (0, 0, 0) (e.g. MNI for the brain presets); None
        centres the grid on the world origin.
    isotropic : dict or None
        Per-voxel volume fractions (arrays of ``shape``) of the template's grey matter
        (``"gm"``) and CSF (``"csf"``): a voxel's non-fibre tissue is split between the two
        in their proportions (grey-matter-like where both are 0). None: all non-fibre
        tissue is the grey-matter-like background.
    """

    shape: tuple[int, int, int]
    voxel_size: float
    bundles: list[Bundle]
    domain: Callable[[np.ndarray], np.ndarray]
    origin: np.ndarray | None = None
    isotropic: dict[str, np.ndarray] | None = None


def slab(preset: str, size: int, n_slices: int, voxel_size: float, streamlines_per_bundle: int):
    """A slab grid (size x size x n_slices) and a maker of in-plane bundles for it.

    Returns the grid shape, its centre in array mm, and ``bundle(name, xy, radius)``: a
    bundle through in-plane control points ``xy`` (mm from the centre) that spans the slab's
    thickness but one slice of background above and below (``normal`` fixed to z).
    """
    if n_slices < 8:
        raise ConfigError(f"{preset} needs at least 8 slices for 3x3x3 neighbourhoods, got {n_slices}")
    shape = (size, size, n_slices)
    centre = (np.array(shape) - 1) * voxel_size / 2.0
    half_thick = (n_slices - 2) * voxel_size / 2.0 - 0.5 * voxel_size

    def bundle(name: str, xy, radius: tuple[float, ...]) -> Bundle:
        xy = np.asarray(xy, dtype=np.float64)
        pts = np.column_stack([xy, np.zeros(len(xy))]) + centre
        return Bundle(name, pts, radius=radius, thickness=(half_thick,), normal=Z,
                      n_streamlines=streamlines_per_bundle)

    return shape, centre, bundle


# FiberCup-like bundles: in-plane control points (mm from the slab's centre) and radii
FIBERCUP_BUNDLES = (
    ("horizontal", ((-52, 6), (-25, 10), (0, 11), (25, 10), (52, 6)), (4.0,)),
    ("vertical", ((-2, -40), (0, -15), (0, 20), (-3, 50)), (4.0,)),
    ("u_shape", ((-38, 40), (-38, 30), (-29, 21), (-20, 30), (-20, 40)), (3.0,)),
    ("fan", ((14, 22), (27, 27), (40, 30)), (2.0, 8.0)),
    ("kiss_left", ((10, -6), (21, -24), (10, -42)), (3.2,)),
    ("kiss_right", ((36, -6), (27, -24), (36, -42)), (3.2,)),
    ("arc", ((-50, -12), (-42, -30), (-28, -42), (-14, -48)), (3.0,)),
)
FIBERCUP_RADIUS_MM = 60.0   # the disc of tissue


def fibercup(streamlines_per_bundle: int = 200, voxel_size: float = 2.0, n_slices: int = 10) -> Layout:
    """A FiberCup-like slab: 7 bundles in a disc of radius 60 mm.

    A ~90 degree crossing (``horizontal`` x ``vertical``), a kissing pair that touches
    at a bottleneck (``kiss_left``, ``kiss_right``), a tight U-turn (``u_shape``), a
    fanning bundle whose radius grows fourfold (``fan``) and a long curved bundle
    (``arc``). Bundles span the slab's thickness, leaving one slice of background above
    and below. The geometry is fixed; the seed only changes noise and fibre sampling
    (``fibercup-moved`` moves the bundles with the seed).
    """
    shape, centre, bundle = slab("fibercup", 64, n_slices, voxel_size, streamlines_per_bundle)
    bundles = [bundle(name, xy, radius) for name, xy, radius in FIBERCUP_BUNDLES]
    return Layout(shape, voxel_size, bundles, _disc(centre))


def _disc(centre: np.ndarray):
    def disc(points: np.ndarray) -> np.ndarray:
        return np.hypot(points[:, 0] - centre[0], points[:, 1] - centre[1]) <= FIBERCUP_RADIUS_MM
    return disc


def fibercup_moved(rng: np.random.Generator, streamlines_per_bundle: int = 200, voxel_size: float = 2.0,
                   n_slices: int = 10, max_tries: int = 200) -> Layout:
    """FiberCup's seven bundles moved by the seed: a new geometry of the same kinds.

    The bundles move in groups that keep FiberCup's configurations: the crossing pair, the
    kissing pair (its bottleneck), and each other bundle alone. A group turns about the
    disc's centre by up to 40 degrees (which keeps its ends near the rim, where FiberCup's
    lie) and about its own centroid by up to 20, shifts by about 3 mm, and scales its radii
    by 0.8-1.25; the crossing's second bundle turns by up to 20 degrees more, so that the
    crossing angle spans about 70-110 degrees. Then the whole layout turns in-plane by any
    angle and is mirrored with probability 1/2, so that its bundles run at new angles to
    the voxel grid. A group that leaves the disc is drawn again (the moves keep each
    centreline's shape, so the U-turn stays as tight as FiberCup's). Crossings and kissings
    that the moves make are kept, as in the ``random`` preset.
    """
    shape, centre, bundle = slab("fibercup-moved", 64, n_slices, voxel_size, streamlines_per_bundle)
    domain = _disc(centre)
    spec = {name: (np.asarray(xy, dtype=np.float64), radius) for name, xy, radius in FIBERCUP_BUNDLES}
    # (members, extra turn of the members after the first, degrees)
    groups = ((("horizontal", "vertical"), 20.0), (("u_shape",), 0.0), (("fan",), 0.0),
              (("kiss_left", "kiss_right"), 0.0), (("arc",), 0.0))
    whole = _rotation(rng.uniform(0.0, 2.0 * np.pi))
    if rng.uniform() < 0.5:
        whole = whole @ np.diag([1.0, -1.0])
    bundles = []
    for names, twist in groups:
        own_centre = np.mean(np.concatenate([spec[n][0] for n in names]), axis=0)
        for _ in range(max_tries):
            about_disc = _rotation(np.radians(rng.uniform(-40.0, 40.0)))
            about_own = [_rotation(np.radians(rng.uniform(-20.0, 20.0)))]
            about_own += [about_own[0] @ _rotation(np.radians(rng.uniform(-twist, twist))) for _ in names[1:]]
            shift = rng.normal(scale=3.0, size=2)
            scale = rng.uniform(0.8, 1.25)
            moved = []
            for name, turn in zip(names, about_own):
                xy, radius = spec[name]
                xy = ((xy - own_centre) @ turn.T + own_centre) @ about_disc.T + shift
                moved.append(bundle(name, xy @ whole.T, tuple(scale * r for r in radius)))
            if all(_inside(make_tube(b, ds=0.5), domain) for b in moved):
                bundles.extend(moved)
                break
        else:  # pragma: no cover - the unmoved bundles fit, so a draw near them does
            raise ConfigError(f"could not place fibercup bundle {names[0]} inside the disc in {max_tries} tries")
    return Layout(shape, voxel_size, bundles, domain)


def _rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def crossing(angles: tuple[float, ...] = (90.0,), streamlines_per_bundle: int = 100,
             voxel_size: float = 2.0, shape: tuple[int, int, int] = (24, 24, 8),
             radius: float = 5.0) -> Layout:
    """Two or three straight bundles crossing at the grid centre, in the x-y plane.

    ``angles`` are the in-plane angles (degrees) of bundles 2.. relative to bundle 1,
    which runs along x. The tissue domain is the whole grid.
    """
    angles = tuple(float(a) for a in angles)
    if not 1 <= len(angles) <= 2:
        raise ConfigError(f"crossing takes 1 or 2 angles (2 or 3 bundles), got {len(angles)}")
    if any(not 0.0 < a < 180.0 for a in angles):
        raise ConfigError(f"crossing angles must be in (0, 180) degrees, got {angles}")
    extent = (np.array(shape) - 1) * voxel_size
    centre = extent / 2.0
    half_len = 0.5 * min(extent[0], extent[1]) - radius - voxel_size
    half_len = (np.floor(half_len / voxel_size) + 0.25) * voxel_size  # ends inside voxels, not on faces
    half_thick = (shape[2] - 2) * voxel_size / 2.0 - 0.5 * voxel_size
    bundles = []
    for k, angle in enumerate((0.0,) + angles):
        d = np.array([np.cos(np.radians(angle)), np.sin(np.radians(angle)), 0.0])
        pts = centre + np.outer([-1.0, 0.0, 1.0], d) * half_len
        bundles.append(Bundle(f"bundle{k + 1}", pts, radius=(radius,), thickness=(half_thick,),
                              normal=Z, n_streamlines=streamlines_per_bundle))
    return Layout(tuple(shape), voxel_size, bundles, lambda p: np.ones(len(p), dtype=bool))


def random_layout(rng: np.random.Generator, n_bundles: int = 6, streamlines_per_bundle: int = 150,
                  voxel_size: float = 2.0, shape: tuple[int, int, int] = (40, 40, 40),
                  max_tries: int = 200) -> Layout:
    """``n_bundles`` random smooth 3D bundles in an ellipsoid; they cross where they meet.

    Each bundle joins two points near the ellipsoid's surface at least 60 degrees apart
    (seen from the centre) through two displaced intermediate points; its radius is
    2-4 mm and one bundle in three fans out. Bundles leaving the domain are redrawn.
    """
    extent = (np.array(shape) - 1) * voxel_size
    centre = extent / 2.0
    semi = 0.46 * extent

    def domain(points: np.ndarray) -> np.ndarray:
        return np.sum(((points - centre) / semi) ** 2, axis=1) <= 1.0

    bundles = []
    for k in range(n_bundles):
        for _ in range(max_tries):
            bundle = _random_bundle(rng, f"bundle{k + 1:02d}", centre, semi, streamlines_per_bundle)
            if _fits(bundle, domain):
                bundles.append(bundle)
                break
        else:  # pragma: no cover - geometry makes this practically impossible
            raise ConfigError(f"could not place random bundle {k + 1} inside the domain in {max_tries} tries")
    return Layout(tuple(shape), voxel_size, bundles, domain)


def _random_bundle(rng, name, centre, semi, n) -> Bundle:
    while True:
        a, b = rng.normal(size=(2, 3))
        a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
        if np.degrees(np.arccos(np.clip(a @ b, -1, 1))) >= 60.0:
            break
    start, end = centre + 0.8 * semi * a, centre + 0.8 * semi * b
    mids = [start + f * (end - start) + rng.normal(scale=0.18, size=3) * semi for f in (1 / 3, 2 / 3)]
    radius = rng.uniform(2.0, 4.0)
    profile = (radius, radius * rng.uniform(1.6, 2.2)) if rng.uniform() < 1 / 3 else (radius,)
    return Bundle(name, np.array([start, *mids, end]), radius=profile, n_streamlines=n)


MAX_BEND = 0.8   # largest tube radius / radius of curvature of its centreline


def folds_locally(tube: Tube, max_bend: float = MAX_BEND) -> bool:
    """True where the tube's radius exceeds ``max_bend`` times its centreline's radius of curvature.

    Such a tube self-intersects on the inner side of the bend, where fibre directions
    become ambiguous.
    """
    curvature = np.linalg.norm(np.diff(tube.tangent, axis=0), axis=1) / np.diff(tube.s)
    return bool(np.any(np.maximum(tube.r1, tube.r2)[1:] * curvature > max_bend))


def _fits(bundle: Bundle, domain, max_bend: float = MAX_BEND) -> bool:
    """True when the tube lies inside the domain and never folds onto itself (:func:`folds_locally`)."""
    tube = make_tube(bundle, ds=0.5)
    return not folds_locally(tube, max_bend) and _inside(tube, domain)


def _inside(tube: Tube, domain) -> bool:
    """True when the tube's rim lies inside the domain."""
    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    rim = tube.fibres(np.column_stack([np.cos(angles), np.sin(angles)]))
    return bool(np.all(domain(rim.reshape(-1, 3))))
