"""The report's Tractometry section: per-bundle FA and MD profiles, a table and small multiples.

The profiles come from :mod:`difftract.eval.profiles` and travel on each method's
:class:`~difftract.viz.report.MethodResult` (``profiles``); methods without them are left out,
and with none the section is empty.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from ..eval.profiles import MD_SCALE, summary
from .figures import _pyplot, embed_png, save_figure


def profiles_figure(profiles_by_method: dict, path: str | Path, force: bool = False) -> Path:
    """Small multiples: a column per bundle, FA (top) and MD (bottom, 10^-3 mm^2/s) against node, a line per method."""

    plt = _pyplot()
    bundles = list(dict.fromkeys(name for profiles in profiles_by_method.values() for name in profiles))
    cols = max(1, len(bundles))
    fig, axes = plt.subplots(2, cols, figsize=(max(4.0, 2.2 * cols), 4.6), sharex=True, sharey="row",
                             squeeze=False, constrained_layout=True)
    for j, name in enumerate(bundles):
        ref = next((ps[name]["reference"] for ps in profiles_by_method.values()
                    if ps.get(name, {}).get("reference") and ps[name]["reference"]["n"]), None)
        if ref is not None:     # the ground truth's streamlines on the same maps, under the methods
            nodes = np.arange(len(ref["fa"]))
            axes[0, j].plot(nodes, ref["fa"], "k--", lw=1, label=f"ground truth ({ref['n']})")
            axes[1, j].plot(nodes, np.asarray(ref["md"]) * MD_SCALE, "k--", lw=1, label="ground truth")
        for method, profiles in profiles_by_method.items():
            p = profiles.get(name)
            if p is None or not p["n"]:
                continue
            nodes = np.arange(len(p["fa"]))
            axes[0, j].plot(nodes, p["fa"], marker=".", ms=3, lw=1, label=f"{method} ({p['n']})")
            axes[1, j].plot(nodes, np.asarray(p["md"]) * MD_SCALE, marker=".", ms=3, lw=1, label=method)
        axes[0, j].set_title(name, fontsize=9)
        axes[0, j].legend(fontsize=6, loc="lower center")
        axes[1, j].set_xlabel("node (head -> tail)", fontsize=7)
        for ax in axes[:, j]:
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("FA", fontsize=8)
    axes[1, 0].set_ylabel("MD (10$^{-3}$ mm$^2$/s)", fontsize=8)
    return save_figure(fig, Path(path), force)


def _number(value: float, digits: int = 3) -> str:
    return "–" if not np.isfinite(value) else f"{value:.{digits}f}"


def profiles_table(profiles_by_method: dict) -> str:
    """HTML: one row per method x bundle with its streamlines, mean FA and mean MD (over the nodes)."""
    truth = any(p.get("reference") for ps in profiles_by_method.values() for p in ps.values())
    head = ["method", "bundle", "streamlines", "mean FA", "mean MD (10⁻³ mm²/s)", "weights"] + \
        (["ground truth: streamlines", "mean FA", "mean MD (10⁻³ mm²/s)"] if truth else [])
    rows = []
    for method, profiles in profiles_by_method.items():
        means = summary(profiles)
        for name, p in profiles.items():
            cells = [html.escape(method), html.escape(name), str(p["n"]), _number(means[name]["fa"]),
                     _number(means[name]["md"] * MD_SCALE), html.escape(p["weights"])]
            if truth:
                ref = means[name].get("reference")
                cells += [str(ref["n"]), _number(ref["fa"]), _number(ref["md"] * MD_SCALE)] if ref else ["–"] * 3
            rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return ("<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def tractometry_section(results: list, out_dir: str | Path, force: bool = False) -> list[str]:
    """The report's HTML parts for the methods that carry profiles (none: an empty list)."""

    profiles_by_method = {r.name: r.profiles for r in results if r.profiles}
    if not profiles_by_method:
        return []
    n_points = len(next(iter(next(iter(profiles_by_method.values())).values()))["fa"])
    png = profiles_figure(profiles_by_method, Path(out_dir) / "report_profiles.png", force)
    return ["<h2>Tractometry</h2>",
            f"<p>FA and MD along each ground-truth bundle, on the tracked streamlines the Tractometer assigns to it "
            f"(valid streamlines): DIPY's <code>afq_profile</code> over {n_points} nodes from the bundle's head ROI "
            "to its tail ROI, with pyAFQ's Gaussian weights (plain mean where they cannot be computed). "
            "Means are over the nodes; dashed: the ground truth's streamlines on the same maps; the profiles "
            "are in <code>profiles.csv</code>.</p>",
            profiles_table(profiles_by_method),
            embed_png(png, "FA and MD profiles per bundle (node 0 at the head ROI)")]
