"""The run report: one self-contained ``report.html`` and the PNGs beside it.

What a person checks before trusting a tractogram, on one page:

- colour FA in three orthogonal slices through the mask's centre, with the mask outline;
- each method's streamlines projected on the three planes, coloured by local direction
  (|x| red, |y| green, |z| blue);
- with ground truth, per-bundle bars of overlap (OL), overreach (OR) and F1 per method;
- a metrics table (streamlines, mean length, time, the Tractometer's VC/IC/NC/VB/OL/OR/F1);
- the parameters of the run and the provenance sidecars of its outputs.

The HTML embeds its pictures (base64 data URIs), so it can be mailed or archived alone;
the same pictures are written beside it as PNG files. Every file is written atomically.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io.atomic import atomic_file
from .figures import _pyplot, embed_png, save_figure
from .qc import _centre, _slices
from .viewer3d import viewer_section

PLANES = (("axial (x-y)", (0, 1)), ("coronal (x-z)", (0, 2)), ("sagittal (y-z)", (1, 2)))
SCORE_COLUMNS = (("VC", "VS_ratio"), ("IC", "IC_ratio"), ("NC", "NC_ratio"), ("VB", "VB"), ("OL", "mean_OL"),
                 ("OR", "mean_OR_vs"), ("F1", "mean_f1"))


@dataclass
class MethodResult:
    """One tracking method's output for the report.

    ``streamlines`` are in voxel space; ``scores`` is the Tractometer's dictionary (or None
    without ground truth); ``sidecar`` the provenance record written with the tractogram.
    """

    name: str
    streamlines: list[np.ndarray]
    voxel_size: float = 1.0
    scores: dict | None = None
    seconds: float | None = None
    params: dict = field(default_factory=dict)
    sidecar: dict | None = None
    profiles: dict | None = None    # bundle -> FA/MD profiles (difftract.eval.profiles), for the Tractometry section

    @property
    def mean_length_mm(self) -> float:
        if not self.streamlines:
            return 0.0
        return float(np.mean([np.linalg.norm(np.diff(s, axis=0), axis=1).sum() for s in self.streamlines])
                     * self.voxel_size)


def colour_fa_figure(rgb: np.ndarray, mask: np.ndarray | None, path: str | Path, force: bool = False) -> Path:
    """Colour FA ``(X, Y, Z, 3)`` in three slices with the mask outline (yellow)."""
    plt = _pyplot()
    shape = rgb.shape[:3]
    centre = _centre(mask, shape)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4), constrained_layout=True)
    masks = _slices(mask.astype(float) if mask is not None else np.ones(shape), centre)
    for ax, (label, plane), (_, mplane) in zip(axes, _slices(rgb, centre), masks):
        ax.imshow(np.clip(np.transpose(plane, (1, 0, 2)), 0, 1), origin="lower", interpolation="nearest")
        if mask is not None and 0 < mplane.sum() < mplane.size:
            ax.contour(mplane.T, levels=[0.5], colors="y", linewidths=0.6)
        ax.set_title(f"colour FA: {label}", fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
    return save_figure(fig, Path(path), force)


def projections_figure(streamlines: list[np.ndarray], shape: tuple[int, int, int], path: str | Path,
                       title: str = "", max_streamlines: int = 2000, force: bool = False) -> Path:
    """Streamlines projected on the three planes, coloured by direction; at most ``max_streamlines`` drawn."""
    from matplotlib.collections import LineCollection

    plt = _pyplot()
    step = max(1, int(np.ceil(len(streamlines) / max_streamlines)))
    sample = [s for s in streamlines[::step] if len(s) > 1]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4), constrained_layout=True)
    if sample:
        starts = np.concatenate([s[:-1] for s in sample])
        ends = np.concatenate([s[1:] for s in sample])
        steps = np.abs(ends - starts)
        colours = steps / np.maximum(np.linalg.norm(steps, axis=1, keepdims=True), 1e-9)
    for ax, (label, (a, b)) in zip(axes, PLANES):
        ax.set_facecolor("black")
        if sample:
            segments = np.stack([starts[:, [a, b]], ends[:, [a, b]]], axis=1)
            ax.add_collection(LineCollection(segments, colors=colours, linewidths=0.4, alpha=0.8))
        ax.set_xlim(-0.5, shape[a] - 0.5), ax.set_ylim(-0.5, shape[b] - 0.5)
        ax.set_aspect("equal")
        ax.set_title(label, fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
    shown = f"{len(sample)} of {len(streamlines)}" if step > 1 else f"{len(streamlines)}"
    fig.suptitle(f"{title}: {shown} streamlines" if title else f"{shown} streamlines")
    return save_figure(fig, Path(path), force)


def bundle_bars_figure(results: list[MethodResult], path: str | Path, force: bool = False) -> Path | None:
    """Per-bundle OL, OR and F1 bars, one colour per method; None when no method has scores."""
    scored = [r for r in results if r.scores and r.scores.get("bundle_wise")]
    if not scored:
        return None
    bundles = [k for k, v in scored[0].scores["bundle_wise"].items() if k != "IB" and "f1" in v]
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 4), constrained_layout=True)
    width = 0.8 / len(scored)
    x = np.arange(len(bundles))
    for ax, (label, key) in zip(axes, (("overlap OL", "OL"), ("overreach OR", "OR_pct_vs"), ("F1", "f1"))):
        for k, r in enumerate(scored):
            values = [r.scores["bundle_wise"].get(b, {}).get(key, 0.0) for b in bundles]
            ax.bar(x + (k - (len(scored) - 1) / 2) * width, values, width, label=r.name)
        ax.set_xticks(x, bundles, rotation=45, ha="right", fontsize=8)
        ax.set_title(label, fontsize=10)
        ax.set_ylim(0, max(1.0, ax.get_ylim()[1]))
    axes[1].legend(fontsize=8, loc="upper right")          # overreach is usually low: room at the top
    return save_figure(fig, Path(path), force)


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def _table(results: list[MethodResult]) -> str:
    scored = any(r.scores for r in results)
    head = ["method", "streamlines", "mean length (mm)", "time (s)"] + ([c for c, _ in SCORE_COLUMNS] if scored else [])
    rows = []
    for r in results:
        cells = [html.escape(r.name), str(len(r.streamlines)), f"{r.mean_length_mm:.1f}", _fmt(r.seconds)]
        if scored:
            cells += [_fmt((r.scores or {}).get(key)) for _, key in SCORE_COLUMNS]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return ("<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def _json_block(title: str, value) -> str:
    text = json.dumps(value, indent=2, sort_keys=True, default=str)
    return f"<details><summary>{html.escape(title)}</summary><pre>{html.escape(text)}</pre></details>"


STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}
td:first-child,th:first-child{text-align:left}img{max-width:100%}figure{margin:.5em 0}
figcaption{font-size:.8em;color:#555}pre{background:#f6f6f6;padding:.6em;overflow:auto;font-size:.8em}"""


def write_report(out_dir: str | Path, *, title: str, rgb: np.ndarray, mask: np.ndarray | None,
                 results: list[MethodResult], params: dict | None = None, provenance: dict | None = None,
                 force: bool = False) -> Path:
    """Write ``report.html`` and its PNGs into ``out_dir``; returns the HTML's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shape = rgb.shape[:3]
    parts = [f"<h1>{html.escape(title)}</h1>", "<h2>Metrics</h2>", _table(results),
             "<h2>Colour FA</h2>", embed_png(colour_fa_figure(rgb, mask, out_dir / "report_colour_fa.png", force),
                                         "colour FA, mask outlined in yellow")]
    bars = bundle_bars_figure(results, out_dir / "report_bundles.png", force)
    if bars is not None:
        parts += ["<h2>Per-bundle scores</h2>", embed_png(bars, "per-bundle overlap, overreach and F1")]
    from .profiles import tractometry_section      # FA/MD along each bundle, when the results carry profiles
    parts += tractometry_section(results, out_dir, force)
    parts.append("<h2>Streamlines</h2>")
    for r in results:
        png = projections_figure(r.streamlines, shape, out_dir / f"report_tracks_{r.name}.png", r.name, force=force)
        parts.append(embed_png(png, f"{r.name}: streamlines coloured by direction"))
    parts.append(viewer_section(rgb, mask, results))                    # interactive WebGL view
    parts.append("<h2>Parameters and provenance</h2>")
    parts.append(_json_block("run parameters", params or {}))
    for r in results:
        parts.append(_json_block(f"{r.name}: tracking parameters", r.params))
        if r.sidecar:
            parts.append(_json_block(f"{r.name}: sidecar", r.sidecar))
    for name, record in (provenance or {}).items():
        parts.append(_json_block(f"{name}: sidecar", record))
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n")
    path = out_dir / "report.html"
    with atomic_file(path, force=force) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path
