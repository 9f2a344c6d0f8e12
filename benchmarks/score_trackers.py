"""Tractometer scores of every tracking rule on the fibercup phantom (ground truth known).

Run: ``.venv/bin/python benchmarks/score_trackers.py`` (about two minutes on 2 cores).
Prints one table row per rule, then one JSON object as the last line.

Phantom: fibercup, seed 0, SNR 20, 32 directions at b = 1000 (``difftract simulate``'s
default). Field: CSD fODF, lmax 8, auto response. Tracking: the CLI's defaults (step 1 mm,
max angle 45 degrees, 20-250 mm, Euler, pmf threshold 0.1), stopping at the white-matter
mask (nearest voxel), 2 random seeds per white-matter voxel (seed 0), float32. The same
field, seeds and stopping rule for every rule; prob is also run with two more seeds to
show its spread. The ground-truth tractogram is scored too (the ceiling).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from difftract.eval.tractometer import load_scoring, score
from difftract.io.tractogram import load_tractogram
from difftract.phantom import PhantomConfig, save_phantom, simulate
from difftract.reconst.csd import CsdModel
from difftract.reconst.peaks import peaks_from_sh
from difftract.tracking.getters import make_getter
from difftract.tracking.seeding import random_seeds
from difftract.tracking.sh_field import SHField
from difftract.tracking.stopping import BinaryCriterion
from difftract.tracking.tracker import Tracker, TrackingParams

KEYS = ("VS_ratio", "IC_ratio", "NC_ratio", "VB", "IB", "mean_OL", "mean_OR_vs", "mean_f1")


def main() -> None:
    import tempfile
    from pathlib import Path

    from dipy.core.gradients import gradient_table

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds-per-voxel", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(2)
    p = simulate(PhantomConfig(preset="fibercup", seed=0))
    out = Path(tempfile.mkdtemp())
    save_phantom(p, out / "phantom")
    config = load_scoring(out / "phantom")
    gtab = gradient_table(p.bvals, bvecs=p.bvecs)
    fit = CsdModel(gtab, lmax=8, legacy=False).fit(p.data, p.mask, progress=False)
    field = SHField(fit.coeffs, legacy=False)
    peaks = torch.as_tensor(peaks_from_sh(fit, progress=False).dirs)
    seeds = random_seeds(p.wm, args.seeds_per_voxel, torch.Generator().manual_seed(0))
    params = TrackingParams(step_mm=1.0, min_len_mm=20, max_len_mm=250)

    rows = {}
    gt = load_tractogram(out / "phantom" / "tractogram.trk")
    rows["ground truth"] = {k: score(gt.streamlines, config).scores[k] for k in KEYS} | {"n": len(gt)}
    runs = [("det", 0), ("closest", 0), ("prob", 0), ("prob", 1), ("prob", 2), ("peak", 0)]
    for method, seed in runs:
        getter = make_getter(method, sh=field, peaks=peaks, max_angle=45)
        tracker = Tracker(getter, BinaryCriterion(p.wm), (2.0, 2.0, 2.0), params, chunk_size=20_000)
        t0 = time.perf_counter()
        streamlines = [s.numpy() for c in tracker.track(seeds, seed=seed) for s in c.split()]
        seconds = time.perf_counter() - t0
        result = score(streamlines, config).scores
        rows[f"{method} (seed {seed})"] = {k: result[k] for k in KEYS} | {"n": len(streamlines),
                                                                        "seconds": round(seconds, 2)}
    print(f"fibercup, {len(seeds)} seeds (2 per WM voxel), CSD lmax 8, step 1 mm, 45 deg, WM mask stop")
    print(f"{'rule':16} {'n':>6} {'VS':>6} {'IC':>6} {'NC':>6} {'VB':>3} {'IB':>3} {'OL':>6} {'OR':>6} {'F1':>6}")
    for name, r in rows.items():
        print(f"{name:16} {r['n']:6} {r['VS_ratio']:6.3f} {r['IC_ratio']:6.3f} {r['NC_ratio']:6.3f} {r['VB']:3} "
              f"{r['IB']:3} {r['mean_OL']:6.3f} {r['mean_OR_vs']:6.3f} {r['mean_f1']:6.3f}")
    print(json.dumps({"benchmark": "score_trackers", "seeds": int(len(seeds)),
                      "rows": {k: {kk: (float(v) if isinstance(v, (float, np.floating)) else v)
                                   for kk, v in r.items()} for k, r in rows.items()}}))


if __name__ == "__main__":
    main()
