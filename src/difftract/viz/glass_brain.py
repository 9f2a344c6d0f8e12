"""QC picture of a whole-brain phantom: a glass brain of its bundles and colour-coded slices.

Top row: the ground-truth streamlines of every bundle projected through the brain (axial,
coronal and sagittal views, world mm, left on the left), each tract in its own colour (a
``_left``/``_right`` pair shares one; shades of one hue per family when families are given),
over the outline of the brain mask. Bottom row:
slices of the mean b0 with the ground truth's main fibre direction as colour (|x| red, |y|
green, |z| blue, as a colour-FA map) where bundles are: what a neuroanatomist checks first
(the corpus callosum red across the midline, the corticospinal tracts blue, the association
bundles green).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from nibabel.affines import apply_affine

from ..io.atomic import atomic_file
from .figures import _pyplot, direction_colour, mean_b0

VIEWS = (("axial (from above)", 0, 1), ("coronal (from behind)", 0, 2), ("sagittal (from the right)", 1, 2))
PER_BUNDLE = 25  # streamlines drawn per bundle: enough to show its course, few enough to see through


def tract_name(name: str) -> str:
    """The tract a bundle belongs to: its name without a ``_left``/``_right`` suffix."""
    for suffix in ("_left", "_right"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


FAMILY_MAPS = ("Reds", "Blues", "Greens", "Purples", "Oranges", "Greys")


def tract_colours(names: list[str], families: dict[str, str] | None = None) -> dict[str, tuple]:
    """One colour per tract, in order of appearance.

    With ``families`` (bundle name -> family), each family gets one hue (red, blue, green,
    purple, orange, grey in order of appearance) and its tracts shades of it; without, the
    ``tab20`` colours, the ten dark ones first.
    """
    plt = _pyplot()
    tracts = list(dict.fromkeys(tract_name(n) for n in names))
    if families is None:
        tab = plt.get_cmap("tab20").colors
        palette = list(tab[0::2]) + list(tab[1::2])
        return {t: palette[i % len(palette)] for i, t in enumerate(tracts)}
    family_of = {tract_name(n): f for n, f in families.items()}
    order = list(dict.fromkeys(family_of.get(t, "other") for t in tracts))
    colours = {}
    for k, family in enumerate(order):
        members = [t for t in tracts if family_of.get(t, "other") == family]
        cmap = plt.get_cmap(FAMILY_MAPS[k % len(FAMILY_MAPS)])
        for t, level in zip(members, np.linspace(0.9, 0.45, len(members)) if len(members) > 1 else [0.75]):
            colours[t] = cmap(level)
    return colours


def glass_brain(phantom, path: str | Path, families: dict[str, str] | None = None, force: bool = False) -> Path:
    """Write the glass-brain and colour-coded-slice picture of ``phantom`` as PNG.

    ``families`` (bundle name -> family, e.g. ``commissural``) colours each family in one hue.
    """
    plt = _pyplot()
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    affine = phantom.affine
    colours = tract_colours([b.name for b in phantom.bundles], families)
    fig = plt.figure(figsize=(17, 10.5), constrained_layout=True)
    grid = fig.add_gridspec(2, 4, width_ratios=[1, 1, 1, 0.55])
    for col, (label, a, b) in enumerate(VIEWS):
        ax = fig.add_subplot(grid[0, col])
        ax.set_facecolor("black")
        _mask_shadow(ax, phantom.mask, affine, a, b)
        for bundle in phantom.bundles:
            step = max(1, len(bundle.streamlines) // PER_BUNDLE)
            lines = [apply_affine(affine, s)[:, [a, b]] for s in bundle.streamlines[::step]]
            ax.add_collection(LineCollection(lines, colors=[colours[tract_name(bundle.name)]],
                                             linewidths=0.5, alpha=0.8))
        ax.autoscale()
        ax.set_aspect("equal")
        ax.set_title(f"ground truth, {label}", fontsize=10)
        ax.set_xlabel("xyz"[a] + " (mm)", fontsize=8)
        ax.set_ylabel("xyz"[b] + " (mm)", fontsize=8)
        ax.tick_params(labelsize=7)
    legend = fig.add_subplot(grid[:, 3])
    legend.axis("off")
    family_of = {tract_name(n): f for n, f in (families or {}).items()}
    handles = [Line2D([], [], color=c, linewidth=3, label=f"{t} ({family_of[t]})" if t in family_of else t)
               for t, c in colours.items()]
    box = legend.legend(handles=handles, loc="upper left", fontsize=9, frameon=True, facecolor="black",
                        labelcolor="white", title="bundles (left and right alike)", title_fontproperties={"size": 9})
    box.get_title().set_color("white")
    for col, (label, plane, extent) in enumerate(_colour_slices(phantom)):
        ax = fig.add_subplot(grid[1, col])
        ax.imshow(plane, origin="lower", extent=extent, interpolation="nearest")
        ax.set_title(label, fontsize=10)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"difftract phantom '{phantom.config.preset}', seed {phantom.config.seed}: "
                 f"{len(phantom.bundles)} bundles, {sum(len(b.streamlines) for b in phantom.bundles)} streamlines "
                 f"(world mm; left on the left)")
    try:
        with atomic_file(path, force=force) as tmp:
            fig.savefig(tmp, dpi=80, format="png")
    finally:
        plt.close(fig)   # also when the output exists: a loop of figures must not leak them
    return Path(path)


def _axis_mm(affine: np.ndarray, axis: int, n: int) -> np.ndarray:
    """World coordinate of voxel centres along an (axis-aligned) array axis."""
    return affine[axis, axis] * np.arange(n) + affine[axis, 3]


def _mask_shadow(ax, mask: np.ndarray, affine: np.ndarray, a: int, b: int) -> None:
    """Outline of the mask's projection along the view's depth axis, in world mm."""
    depth = ({0, 1, 2} - {a, b}).pop()
    shadow = mask.any(axis=depth).astype(float)  # axes (a, b) in array order
    ax.contour(_axis_mm(affine, a, shadow.shape[0]), _axis_mm(affine, b, shadow.shape[1]), shadow.T,
               levels=[0.5], colors="0.6", linewidths=0.8)


def _colour_slices(phantom) -> list[tuple[str, np.ndarray, list[float]]]:
    """Axial, coronal and sagittal slices: grey b0 with the main GT direction coloured in bundles."""
    b0 = mean_b0(phantom)
    b0 = np.clip(b0 / max(float(np.percentile(b0[phantom.mask], 99)), 1e-6), 0, 1) if phantom.mask.any() else b0
    rgb = direction_colour(phantom)
    weight = np.clip(phantom.fractions[..., :1] * 2, 0, 1)
    image = (1 - weight) * b0[..., None] * 0.8 + weight * rgb / max(float(rgb.max()), 1e-6)
    inside = np.argwhere(phantom.mask)
    lo, hi = inside.min(axis=0), inside.max(axis=0)
    centre = inside.mean(axis=0).round().astype(int)
    # axial through the centrum semiovale (two thirds up the brain), coronal and sagittal through the centre
    k = int(lo[2] + 0.67 * (hi[2] - lo[2]))
    cuts = [(2, k), (1, centre[1]), (0, centre[0])]
    out = []
    for (axis, index), (label, a, b) in zip(cuts, VIEWS):
        plane = np.take(image, index, axis=axis)  # remaining axes (a, b) in order
        xa, xb = _axis_mm(phantom.affine, a, plane.shape[0]), _axis_mm(phantom.affine, b, plane.shape[1])
        if xa[0] > xa[-1]:  # radiological array: show world x increasing to the right
            plane, xa = plane[::-1], xa[::-1]
        where = float(_axis_mm(phantom.affine, axis, index + 1)[index])
        half = abs(phantom.affine[0, 0]) / 2
        extent = [xa[0] - half, xa[-1] + half, xb[0] - half, xb[-1] + half]
        out.append((f"b0 + GT main direction, {label.split()[0]} {'xyz'[axis]} = {where:.0f} mm",
                    np.transpose(plane, (1, 0, 2)), extent))
    return out
