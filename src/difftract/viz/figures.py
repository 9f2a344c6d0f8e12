"""QC figures a person looks at before trusting a result."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np

from ..io.atomic import atomic_file
from ..io.gradients import B0_THRESHOLD


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def mean_b0(phantom) -> np.ndarray:
    """The phantom's mean b0 volume (X, Y, Z)."""
    return phantom.data[..., phantom.bvals <= B0_THRESHOLD].mean(axis=-1)


def direction_colour(phantom) -> np.ndarray:
    """(X, Y, Z, 3): the largest population's direction (|x|, |y|, |z| as RGB) times its volume fraction."""
    return np.abs(phantom.peaks[..., 0, :]) * np.clip(phantom.fractions[..., :1], 0, 1)


def phantom_overview(phantom, path: str | Path, force: bool = False) -> Path:
    """Three panels of the phantom's middle slice: b0, ground-truth fibre colour, streamlines.

    The colour panel is the largest population's direction (|x|, |y|, |z| as RGB) scaled
    by its volume fraction; streamlines are projected on the slice plane and coloured by
    their local direction. Written atomically as PNG.
    """
    plt = _pyplot()
    z = phantom.shape[2] // 2
    b0 = mean_b0(phantom)[:, :, z]
    rgb = direction_colour(phantom)[:, :, z]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.6), constrained_layout=True)
    axes[0].imshow(b0.T, origin="lower", cmap="gray")
    axes[0].contour(phantom.mask[:, :, z].T, levels=[0.5], colors="y", linewidths=0.6)
    axes[0].set_title(f"mean b0, slice {z} (mask in yellow)")
    axes[1].imshow(np.transpose(rgb, (1, 0, 2)) / max(rgb.max(), 1e-6), origin="lower")
    axes[1].set_title("ground truth: main fibre direction x fraction")
    ax = axes[2]
    ax.set_facecolor("black")
    from matplotlib.collections import LineCollection

    for bundle in phantom.bundles:
        sample = bundle.streamlines[:: max(1, len(bundle.streamlines) // 40)]
        segments = np.concatenate([np.stack([sl[:-1, :2], sl[1:, :2]], axis=1) for sl in sample])
        steps = np.abs(np.concatenate([np.diff(sl, axis=0) for sl in sample]))
        colours = steps / np.maximum(np.linalg.norm(steps, axis=1, keepdims=True), 1e-9)
        ax.add_collection(LineCollection(segments, colors=colours, linewidths=0.5))
        head = bundle.streamlines[len(bundle.streamlines) // 2][0]  # label at the bundle's head
        ax.text(head[0], head[1], bundle.name, color="white", fontsize=7, ha="center", va="center")
    ax.set_xlim(-0.5, phantom.shape[0] - 0.5)
    ax.set_ylim(-0.5, phantom.shape[1] - 0.5)
    ax.set_aspect("equal")
    ax.set_title(f"ground-truth streamlines ({sum(len(b.streamlines) for b in phantom.bundles)}), x-y projection")
    for a in axes:
        a.set_xticks([]), a.set_yticks([])
    fig.suptitle(f"difftract phantom '{phantom.config.preset}', seed {phantom.config.seed}, "
                 f"SNR {phantom.config.snr}, {len(phantom.bvals)} volumes")
    with atomic_file(path, force=force) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return Path(path)


def save_figure(fig, path: Path, force: bool) -> Path:
    """Write ``fig`` as a PNG atomically and close it."""
    plt = _pyplot()
    with atomic_file(path, force=force) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path


def embed_png(path: Path, alt: str) -> str:
    """An HTML figure holding the PNG at ``path`` inline, captioned ``alt``, linking to the file."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption>' \
           f'{html.escape(alt)} (<a href="{html.escape(path.name)}">{html.escape(path.name)}</a>)</figcaption></figure>'
