"""The cohort's tables and page: ``cohort.csv``, ``cohort.json`` and ``cohort.html``, one row per subject.

A row holds the subject's name, its status (done, skipped, failed, or pending while the
cohort runs), the one-line error of a failure, and its figures: streamlines, mean length,
seconds, peak memory of the task and, with ground truth, the Tractometer's VC VB IC NC OL
OR F1 (the run report's columns). A skipped subject's figures are read back from its
folder, and its time and memory from the cohort table of the run that made it.
:mod:`.cohort` writes the three files again each time a subject finishes.
"""

from __future__ import annotations

import csv
import html
import io
import json
from collections import Counter
from pathlib import Path

from .run import RunOptions

COLUMNS = ("name", "status", "error", "streamlines", "mean_length_mm", "seconds", "peak_rss_gb", "peak_gpu_gb",
           "VC", "VB", "IC", "NC", "OL", "OR", "F1", "subject", "out")
# the Tractometer's figures in the cohort table: (column, key of scores.json), as the run report shows them
SCORE_KEYS = (("VC", "VS_ratio"), ("VB", "VB"), ("IC", "IC_ratio"), ("NC", "NC_ratio"), ("OL", "mean_OL"),
              ("OR", "mean_OR_vs"), ("F1", "mean_f1"))


def row_figures(streamlines: dict, mean_length: dict, scores: dict, methods: tuple[str, ...]) -> dict:
    """A row's figures; with several methods every column is suffixed ``_METHOD``."""
    row = {}
    for method in methods:
        suffix = "" if len(methods) == 1 else f"_{method}"
        row[f"streamlines{suffix}"] = streamlines.get(method, "")
        length = mean_length.get(method)
        row[f"mean_length_mm{suffix}"] = "" if length is None else round(length, 2)
        for column, key in SCORE_KEYS:
            value = (scores.get(method) or {}).get(key, "")
            row[f"{column}{suffix}"] = round(value, 4) if isinstance(value, float) else value
    return row


def finished_row(name: str, directory: Path, out: Path, options: RunOptions, previous: dict | None) -> dict:
    """The row of a finished subject, read from its files; its time and memory from the run that made it."""
    streamlines, lengths, scores = {}, {}, {}
    for method in options.methods:
        sidecar = read_json((out / options.tracks_name(method)).with_suffix(".json"))
        streamlines[method] = (sidecar or {}).get("n_streamlines", "")
        scores[method] = read_json(out / options.scores_name(method))
    row = {"name": name, "status": "skipped", "error": "", "subject": str(directory), "out": str(out),
           **row_figures(streamlines, lengths, scores, options.methods)}
    for key in ("seconds", "peak_rss_gb", "peak_gpu_gb", "torch_threads",
                *(c for c in previous or {} if c.startswith("mean_length"))):
        row[key] = (previous or {}).get(key, "")
    return row


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def counts(rows: list[dict]) -> dict[str, int]:
    return dict(Counter(r["status"] for r in rows))


def write_tables(out: Path, rows: list[dict], options: RunOptions, **about) -> dict[str, Path]:
    """``cohort.csv``, ``cohort.json`` (with ``about``: seconds, workers...) and ``cohort.html``, atomically."""
    from ..io.atomic import atomic_file
    from ..io.sidecar import write_json

    columns = list(dict.fromkeys([c for c in COLUMNS if any(c in r for r in rows)]
                                 + [c for r in rows for c in r if c not in COLUMNS]))
    rows = [{c: r.get(c, "") for c in columns} for r in rows]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_file(out / "cohort.csv", force=True) as tmp:
        tmp.write_text(buffer.getvalue())
    write_json(out / "cohort.json", {
        "counts": counts(rows), **about, "methods": list(options.methods),
        "peak_rss_gb": "the worker process's peak resident memory while it ran the subject (Linux VmHWM reset at "
                       "the task's start; includes the worker's own 0.3-0.5 GB; with several tasks at once in one "
                       "worker process, the process's peak while this one ran)",
        "subjects": rows}, force=True)
    with atomic_file(out / "cohort.html", force=True) as tmp:
        tmp.write_text(_page(rows, options), encoding="utf-8")
    return {"csv": out / "cohort.csv", "json": out / "cohort.json", "html": out / "cohort.html"}


def _page(rows: list[dict], options: RunOptions) -> str:
    """One row per subject: a thumbnail of its streamlines, its figures, a link to its report (paths relative)."""
    from ..viz.report import STYLE

    method = options.methods[0]
    suffix = "" if len(options.methods) == 1 else f"_{method}"
    figures = ["streamlines", "mean_length_mm", "seconds", "peak_rss_gb", *(c for c, _ in SCORE_KEYS)]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ("subject", "status", method, *figures))
    body = []
    for r in rows:
        name = html.escape(r["name"])
        link = f'<a href="{name}/report.html">'
        thumb = f"report_tracks_{method}.png"
        cells = [f"{link}{name}</a>" if r["status"] in ("done", "skipped") else name,
                 html.escape(r["status"]) + (f"<br><small>{html.escape(r['error'])}</small>" if r["error"] else ""),
                 f'{link}<img src="{name}/{thumb}" width="160" loading="lazy" alt="{name}: streamlines"></a>'
                 if (Path(r["out"]) / thumb).is_file() else ""]
        cells += [html.escape(str(r.get(c if c in ("seconds", "peak_rss_gb") else c + suffix, ""))) for c in figures]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    title = f"difftract cohort: {len(rows)} subjects ({', '.join(options.methods)})"
    summary = ", ".join(f"{n} {s}" for s, n in counts(rows).items())
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1><p>{html.escape(summary)}; "
            'figures in <a href="cohort.csv">cohort.csv</a> and <a href="cohort.json">cohort.json</a>, '
            f'each subject\'s log in <a href="logs/">logs/</a></p><table><tr>{head}</tr>{"".join(body)}</table>'
            "</body></html>\n")
