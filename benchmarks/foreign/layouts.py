"""Geometries of the foreign test set that no training run has seen.

``crossroads`` is a hand-made slab, unlike fibercup: a three-way crossing at 60 degrees, a
45-degree crossing, a kissing pair and a CSF pool plus a CSF rim (so grey-matter/CSF
partial volume borders the bundles). The ``random`` preset with a test seed (>= 9000)
and ``fibercup`` itself (a training geometry, for a signal-only shift) come from
:mod:`difftract.phantom.presets` through :func:`difftract.phantom.simulate`.
"""

from __future__ import annotations

import numpy as np

from difftract.phantom.presets import Layout, slab

LAYOUTS = ("crossroads", "random", "fibercup")


def crossroads(streamlines_per_bundle: int = 150, voxel_size: float = 2.0, n_slices: int = 10) -> Layout:
    """A 56 x 56 slab in a disc of radius 52 mm: 7 bundles, crossings at 60 and 45 degrees.

    Upper half: ``h_upper`` (along x), ``diag60`` and ``diag120`` cross at one point, three
    populations at 60 degrees. Lower left: ``cross_a`` and ``cross_b`` cross at 45 degrees.
    Lower right: ``kiss_top`` and ``kiss_bottom`` bend towards each other and touch.
    """
    shape, centre, bundle = slab("crossroads", 56, n_slices, voxel_size, streamlines_per_bundle)

    def line(name, through, angle_deg, half_length, radius):
        d = np.array([np.cos(np.radians(angle_deg)), np.sin(np.radians(angle_deg))])
        return bundle(name, np.asarray(through) + np.outer([-1.0, 0.0, 1.0], d) * half_length, radius)

    bundles = [
        bundle("h_upper", [(-38, 16), (-12, 19), (12, 19), (38, 16)], (3.5,)),
        line("diag60", (0, 18.5), 60.0, 20.0, (3.0,)),
        line("diag120", (0, 18.5), 120.0, 20.0, (3.0,)),
        line("cross_a", (-20, -22), 20.0, 15.0, (3.0,)),
        line("cross_b", (-20, -22), 65.0, 14.0, (3.0,)),
        bundle("kiss_top", [(10, -12), (21, -19), (32, -12)], (3.0,)),
        bundle("kiss_bottom", [(10, -33), (21, -26), (32, -33)], (3.0,)),
    ]
    radius_mm = 52.0

    def disc(points: np.ndarray) -> np.ndarray:
        return np.hypot(points[:, 0] - centre[0], points[:, 1] - centre[1]) <= radius_mm

    # CSF share of the non-fibre tissue: a pool (soft edge) and the disc's outer 4 mm
    ijk = np.stack(np.meshgrid(*[np.arange(k) for k in shape], indexing="ij"), -1) * voxel_size - centre
    r = np.hypot(ijk[..., 0], ijk[..., 1])
    pool = np.hypot(ijk[..., 0] + 30.0, ijk[..., 1] - 2.0)
    csf = np.clip(np.maximum((r - (radius_mm - 4.0)) / 2.0, (8.0 - pool) / 3.0), 0.0, 1.0)
    return Layout(shape, voxel_size, bundles, disc, isotropic={"gm": 1.0 - csf, "csf": csf})
