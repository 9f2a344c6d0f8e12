"""Report size benchmark: ``report.html`` (with its interactive 3D view) for a 50k-streamline tractogram.

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/bench_report_size.py`` (under a minute on 2 cores).
Prints readable figures, then one JSON object as the last line.

The tractogram is fibercup's ground truth (1,400 streamlines) copied with a 0.3-voxel jitter up
to ``--streamlines`` (50,000), each streamline densified to 0.5-voxel steps (as a tracker at a
half-voxel step writes them). Two grids:

- ``fibercup``: the phantom's own 64 x 64 x 10 grid and colour FA;
- ``brain_grid``: the same streamlines stretched over an HCP-sized 145 x 174 x 145 grid with a
  random (incompressible) colour FA in an ellipsoid: the worst case for the embedded slices and
  PNGs at a realistic brain size.

Figures per grid: the HTML's size (MB), the 3D view's share of it, the streamlines the view
shows, and the time ``write_report`` takes. Target (issue 23): the report of a 50k-streamline
tractogram under 15 MB.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

import numpy as np

from _check import Target, parse_args
from difftract.phantom import PhantomConfig, simulate
from difftract.viz.report import MethodResult, write_report

TARGETS = [
    Target("report_mb_fibercup", "<", 15.0, "issue 23: report of a 50k-streamline tractogram under 15 MB"),
    Target("report_mb_brain_grid", "<", 15.0, "issue 23: report of a 50k-streamline tractogram under 15 MB "
           "(HCP-sized grid, incompressible colour FA)"),
]


def _densify(s: np.ndarray, step: float = 0.5) -> np.ndarray:
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(s, axis=0), axis=1))])
    t = np.arange(0.0, arc[-1] + 1e-9, step)
    return np.stack([np.interp(t, arc, s[:, k]) for k in range(3)], axis=1)


def tractogram(base: list[np.ndarray], n: int, rng: np.random.Generator, stretch=(1.0, 1.0, 1.0),
               offset=(0.0, 0.0, 0.0)) -> list[np.ndarray]:
    out = []
    for i in range(n):
        s = base[i % len(base)] * np.asarray(stretch) + np.asarray(offset)
        out.append((_densify(s) + rng.normal(scale=0.3, size=3)).astype(np.float32))
    return out


def measure(out: Path, rgb: np.ndarray, mask: np.ndarray, streamlines: list[np.ndarray], voxel: float) -> dict:
    t = time.perf_counter()
    path = write_report(out, title="report size", rgb=rgb, mask=mask,
                        results=[MethodResult("det", streamlines, voxel, seconds=1.0)], force=True)
    seconds = time.perf_counter() - t
    text = path.read_text(encoding="utf-8")
    view = text[text.index("<h2>3D view</h2>"):text.index("</script>", text.index('id="dt3d-data"')) + 9]
    view += re.search(r"<script>\(function \(\) \{.*?\}\)\(\);\s*</script>", text, re.S).group(0)
    shown = int(re.search(r"(\d+) of (\d+) streamlines", view).group(1))
    return {"report_mb": path.stat().st_size / 1e6, "view_mb": len(view.encode()) / 1e6, "shown": shown,
            "streamlines": len(streamlines), "points": int(sum(len(s) for s in streamlines)),
            "seconds": round(seconds, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streamlines", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=0)
    args, check = parse_args(ap, "bench_report_size", TARGETS)
    rng = np.random.default_rng(args.seed)
    ph = simulate(PhantomConfig(preset="fibercup", seed=args.seed))
    rgb = (np.abs(ph.peaks[..., 0, :]) * np.clip(ph.fractions[..., :1], 0, 1)).astype(np.float32)
    figures = {"streamlines": args.streamlines}
    with tempfile.TemporaryDirectory() as tmp:
        with check.measuring("report_mb_fibercup", what="fibercup report"):
            f = measure(Path(tmp) / "fibercup", rgb, ph.mask, tractogram(ph.streamlines, args.streamlines, rng),
                        ph.voxel_size)
            figures["fibercup"] = f
            check.measure("report_mb_fibercup", f["report_mb"])
        with check.measuring("report_mb_brain_grid", what="brain-grid report"):
            shape = (145, 174, 145)
            grid = np.indices(shape).transpose(1, 2, 3, 0) - (np.array(shape) - 1) / 2
            mask = ((grid / (np.array(shape) / 2 - 4)) ** 2).sum(-1) <= 1
            big = rng.random(shape + (3,), dtype=np.float32) * mask[..., None]
            stretch = (2.0, 2.4, 12.0)                     # fibercup's 64 x 64 x 10 over the brain grid
            offset = ((shape[0] - 64 * stretch[0]) / 2, (shape[1] - 64 * stretch[1]) / 2, 10.0)
            b = measure(Path(tmp) / "brain", big, mask,
                        tractogram(ph.streamlines, args.streamlines, rng, stretch, offset), 1.25)
            figures["brain_grid"] = b
            check.measure("report_mb_brain_grid", b["report_mb"])
    for name in ("fibercup", "brain_grid"):
        if name in figures:
            f = figures[name]
            print(f"{name:10}: {f['streamlines']:,} streamlines ({f['points']:,} points): report.html "
                  f"{f['report_mb']:.2f} MB, of which the 3D view {f['view_mb']:.2f} MB "
                  f"({f['shown']:,} streamlines shown); written in {f['seconds']:.1f} s")
    check.finish(figures)


if __name__ == "__main__":
    main()
