"""The ``brain`` preset: 32 named bundles of a human brain on the MNI152 template.

In the spirit of the ISMRM 2015 tractography challenge phantom, each major bundle of the
adult brain is a tube around a smooth centreline drawn through anatomical landmarks in MNI
mm: commissural (six portions of the corpus callosum, the anterior commissure), projection
(corticospinal tracts, anterior thalamic radiations, optic radiations), association
(arcuate fasciculus, superior longitudinal, inferior fronto-occipital and inferior
longitudinal fasciculi, uncinate), limbic (cingulum, fornix) and cerebellar (middle,
superior and inferior cerebellar peduncles). Bundles run through the template's white
matter and fan out (a growing radius) where they reach grey matter; they cross where the
anatomy does, e.g. in the centrum semiovale (callosal body x corticospinal x SLF) and in
the pons (middle cerebellar peduncle x corticospinal).

The control points were placed from anatomical knowledge, then moved by at most 5 mm where
that kept the centreline in the template's white matter (``tests/phantom/test_brain.py``
checks it). Left and right bundles are mirror images (x -> -x) of one centreline, as the
template is symmetric. The tissue around the bundles comes from the template: grey matter and CSF
fractions (``Layout.isotropic``) and the brain mask as the tissue domain.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from .geometry import Bundle
from .presets import Layout, _fits
from .template import Template, load_template

FAMILIES = ("commissural", "projection", "association", "limbic", "cerebellar")
FAN_SEGMENTS = 8          # a fanning end grows over the last 1/8 of the bundle's length


@dataclass(frozen=True)
class Tract:
    """One anatomical bundle, drawn in MNI mm.

    Attributes
    ----------
    name : str
        Base name; bilateral tracts become ``NAME_left`` and ``NAME_right``.
    family : str
        One of :data:`FAMILIES`.
    points : tuple of (x, y, z)
        Centreline control points in MNI mm, head first; for a bilateral tract, the left
        hemisphere's (x < 0 where the tract is lateral).
    radius : float
        Core radius, mm.
    fan : (float, float)
        Radius at the head and at the tail, mm (>= ``radius`` where the bundle fans into cortex).
    bilateral : bool
        Also draw the mirror image (x -> -x) as the right hemisphere's tract.
    """

    name: str
    family: str
    points: tuple[tuple[float, float, float], ...]
    radius: float
    fan: tuple[float, float]
    bilateral: bool = True

    def profile(self) -> tuple[float, ...]:
        """Radius at evenly spaced fractions of the length: constant, growing at the ends."""
        inner = (self.radius,) * (FAN_SEGMENTS - 1)
        return (self.fan[0], *inner, self.fan[1])


def _mirror(points) -> tuple:
    return tuple((-x, y, z) for x, y, z in points)


TRACTS: tuple[Tract, ...] = (
    # commissural: U-shaped across the midline, both ends in cortex
    Tract("CC_genu", "commissural", ((-24, 50, 12), (-16, 38, 10), (-8, 30, 8), (0, 28, 8),
                                     (8, 30, 8), (16, 38, 10), (24, 50, 12)), 4.5, (6.0, 6.0), False),
    Tract("CC_rostral_body", "commissural", ((-26, 16, 50), (-23, 15, 35), (-12, 13, 27),
                                             (0, 14, 22), (12, 13, 27), (23, 15, 35),
                                             (26, 16, 50)), 4.5, (6.0, 6.0), False),
    Tract("CC_ant_midbody", "commissural", ((-31, -2, 54), (-23, 0, 38), (-13, 0, 30),
                                            (0, 0, 25), (13, 0, 30), (23, 0, 38),
                                            (31, -2, 54)), 4.5, (6.0, 6.0), False),
    Tract("CC_post_midbody", "commissural", ((-34, -22, 54), (-24, -20, 38), (-13, -16, 31),
                                             (0, -14, 25), (13, -16, 31), (24, -20, 38),
                                             (34, -22, 54)), 4.5, (6.0, 6.0), False),
    Tract("CC_isthmus", "commissural", ((-32, -46, 50), (-24, -38, 36), (-14, -32, 28),
                                        (0, -28, 22), (14, -32, 28), (24, -38, 36),
                                        (32, -46, 50)), 4.5, (6.0, 6.0), False),
    Tract("CC_splenium", "commissural", ((-18, -86, 6), (-25, -71, 11), (-19, -50, 14),
                                         (-8, -42, 14), (0, -39, 13), (8, -42, 14),
                                         (19, -50, 14), (25, -71, 11), (18, -86, 6)), 4.5, (6.0, 6.0), False),
    Tract("AC", "commissural", ((-40, -12, -22), (-32, -5, -12), (-22, 0, -8), (-12, 4, -5),
                                (0, 3, -4), (12, 4, -5), (22, 0, -8), (32, -5, -12),
                                (40, -12, -22)), 2.0, (3.0, 3.0), False),
    # projection: brainstem or thalamus to cortex
    Tract("CST", "projection", ((-6, -30, -42), (-10, -24, -24), (-16, -19, -8),
                                (-22, -16, 8), (-26, -18, 26), (-28, -20, 44),
                                (-30, -22, 62)), 4.0, (3.0, 6.0)),
    Tract("ATR", "projection", ((-8, -16, 4), (-14, -4, 3), (-18, 10, 6), (-22, 26, 10),
                                (-24, 44, 18)), 3.5, (3.5, 5.0)),
    Tract("OR", "projection", ((-22, -26, -6), (-32, -31, -1), (-35, -48, 3), (-28, -68, 4),
                               (-16, -88, 4)), 3.5, (3.0, 5.0)),
    # association: within one hemisphere, cortex to cortex
    Tract("AF", "association", ((-46, 14, 14), (-38, -4, 26), (-38, -28, 30), (-42, -44, 18),
                                (-45, -42, 0), (-50, -28, -10)), 3.5, (5.0, 5.0)),
    Tract("SLF", "association", ((-28, 34, 30), (-32, 12, 36), (-32, -16, 38),
                                 (-29, -44, 38), (-28, -62, 44)), 4.0, (5.0, 5.0)),
    Tract("IFOF", "association", ((-24, 48, -2), (-26, 24, -3), (-32, 2, -10),
                                  (-36, -26, -4), (-35, -55, 0), (-26, -82, 2)), 3.5, (5.0, 5.0)),
    Tract("ILF", "association", ((-38, 8, -30), (-44, -14, -20), (-44, -40, -10),
                                 (-39, -61, -3), (-34, -82, -4)), 3.5, (5.0, 5.0)),
    Tract("UF", "association", ((-38, 4, -30), (-34, 4, -15), (-28, 14, -10), (-21, 26, -10),
                                (-18, 40, -14)), 3.0, (4.0, 5.0)),
    # limbic
    Tract("CG", "limbic", ((-6, 34, -6), (-9, 40, 9), (-11, 25, 25), (-9, 0, 36),
                           (-9, -29, 35), (-10, -50, 24), (-15, -47, 7), (-20, -41, -5),
                           (-24, -30, -14)), 3.0, (3.5, 3.5)),
    Tract("FX", "limbic", ((-30, -24, -12), (-27, -33, -4), (-19, -38, 6), (-9, -33, 14),
                           (-3, -22, 17), (-3, -8, 17), (-3, 2, 10), (-4, 2, 0),
                           (-5, -6, -10)), 2.0, (2.0, 2.0)),
    # cerebellar
    Tract("MCP", "cerebellar", ((-38, -64, -34), (-27, -51, -34), (-18, -34, -32),
                                (-8, -26, -31), (0, -24, -31), (8, -26, -31), (18, -34, -32),
                                (27, -51, -34), (38, -64, -34)), 5.0, (5.0, 5.0), False),
    Tract("SCP", "cerebellar", ((-14, -56, -30), (-9, -41, -23), (0, -27, -14), (8, -19, -5),
                                (12, -16, 4)), 2.5, (3.0, 3.0)),
    Tract("ICP", "cerebellar", ((-6, -38, -52), (-11, -43, -40), (-17, -50, -33),
                                (-22, -58, -28)), 2.5, (2.5, 3.5)),
)


def brain_tracts() -> list[Tract]:
    """:data:`TRACTS` with bilateral tracts split into ``_left`` and ``_right`` (mirrored)."""
    out = []
    for t in TRACTS:
        if not t.bilateral:
            out.append(t)
            continue
        out.append(Tract(f"{t.name}_left", t.family, t.points, t.radius, t.fan, False))
        out.append(Tract(f"{t.name}_right", t.family, _mirror(t.points), t.radius, t.fan, False))
    return out


def families() -> dict[str, str]:
    """Bundle name -> family, for every bundle of the preset."""
    return {t.name: t.family for t in brain_tracts()}


def brain(streamlines_per_bundle: int = 300, voxel_size: float = 2.0,
          template: Template | None = None) -> Layout:
    """The whole-brain layout on the MNI152 grid of ``voxel_size`` mm (1.25-3).

    Raises :class:`ConfigError` if a bundle would fold or leave the brain (which the
    fixed geometry avoids at every supported voxel size).
    """
    template = template or load_template(voxel_size)
    domain = template.in_brain
    bundles = []
    for t in brain_tracts():
        bundle = Bundle(t.name, template.to_array_mm(np.array(t.points, dtype=np.float64)),
                        radius=t.profile(), n_streamlines=streamlines_per_bundle)
        if not _fits(bundle, domain):
            raise ConfigError(f"brain bundle {t.name!r} folds or leaves the brain mask at "
                              f"{template.voxel_size:g} mm voxels")
        bundles.append(bundle)
    return Layout(template.shape, template.voxel_size, bundles, domain, origin=template.origin,
                  isotropic={"gm": template.gm, "csf": template.csf})
