"""QC pictures of fitted maps: each map in three orthogonal slices.

Slices go through the centre of the mask (not of the grid), so a small brain in a large
field of view still shows tissue. Scalar maps are grey with a colour bar; ``(X, Y, Z, 3)``
maps are shown as RGB (colour FA: |x| red, |y| green, |z| blue). Images are drawn in
voxel axes with the first axis left to right, as the QC of a phantom.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io.atomic import atomic_file
from .figures import _pyplot


def _centre(mask: np.ndarray | None, shape: tuple[int, int, int]) -> tuple[int, int, int]:
    if mask is None or not mask.any():
        return tuple(s // 2 for s in shape)
    return tuple(int(round(c)) for c in np.argwhere(mask).mean(axis=0))


def _slices(volume: np.ndarray, centre: tuple[int, int, int]) -> list[tuple[str, np.ndarray]]:
    i, j, k = centre
    return [(f"axial z={k}", volume[:, :, k]), (f"coronal y={j}", volume[:, j, :]),
            (f"sagittal x={i}", volume[i, :, :])]


def map_slices(maps: list[tuple[str, np.ndarray, dict]], path: str | Path, mask: np.ndarray | None = None,
               title: str = "", force: bool = False) -> Path:
    """Write a PNG with one row per map and three orthogonal slices per row.

    Parameters
    ----------
    maps : list of (name, array, options)
        ``array`` is ``(X, Y, Z)`` (grey) or ``(X, Y, Z, 3)`` (RGB in [0, 1]); ``options``
        may give ``vmin``/``vmax`` for grey maps.
    mask : ndarray of bool, optional
        Where to centre the slices; its outline is drawn on grey maps.
    """
    plt = _pyplot()
    shape = maps[0][1].shape[:3]
    centre = _centre(mask, shape)
    fig, axes = plt.subplots(len(maps), 3, figsize=(12, 3.6 * len(maps)), squeeze=False, constrained_layout=True)
    for row, (name, volume, options) in zip(axes, maps):
        rgb = volume.ndim == 4
        finite = volume[np.isfinite(volume)]
        vmax = options.get("vmax", float(np.percentile(finite, 99.5)) if finite.size else 1.0)
        vmin = options.get("vmin", 0.0)
        for ax, (label, plane), (_, mplane) in zip(row, _slices(volume, centre),
                                                   _slices(mask if mask is not None else np.ones(shape), centre)):
            if rgb:
                ax.imshow(np.clip(np.transpose(plane, (1, 0, 2)), 0, 1), origin="lower", interpolation="nearest")
            else:
                im = ax.imshow(plane.T, origin="lower", cmap="gray", vmin=vmin, vmax=max(vmax, vmin + 1e-12),
                               interpolation="nearest")
                if mask is not None and 0 < mplane.sum() < mplane.size:
                    ax.contour(mplane.T.astype(float), levels=[0.5], colors="y", linewidths=0.5)
            ax.set_title(f"{name}: {label}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        if not rgb:
            fig.colorbar(im, ax=row.tolist(), shrink=0.8)
    if title:
        fig.suptitle(title)
    with atomic_file(path, force=force) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return Path(path)
