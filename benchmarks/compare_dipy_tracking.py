"""Equivalence of difftract's trackers with DIPY 1.12's, streamline by streamline.

Run: ``.venv/bin/python benchmarks/compare_dipy_tracking.py`` (about a minute on 2 cores;
``--quick`` for fewer seeds). Prints a readable table, then one JSON object as the last line.

Field: CSD fODFs (lmax 8, DIPY's legacy basis, which DIPY's trackers assume) of the
fibercup phantom at SNR 20; seeds: ``--seeds-per-voxel`` random points in every white-matter
voxel; stopping: the binary white-matter mask, and FA > 0.2 (trilinear); float64.

Compared, on identical inputs and parameters:

- ``dipy.tracking.tracker.deterministic_tracking`` against difftract's ``det`` getter;
- ``dipy.tracking.tracker.closestpeak_tracking`` against difftract's ``closest`` getter.

Streamlines are paired by seed (and by peak rank for closest-peak). For each pair: the
point counts, and the mean distance (mm) between corresponding points, aligned at the
seed. An unpaired streamline (present in one output only) counts as a mismatch.
Acceptance: >= 99% of streamlines with the same count +-1 and mean distance < 0.05 mm.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from dipy.tracking.stopping_criterion import BinaryStoppingCriterion, ThresholdStoppingCriterion
from dipy.tracking.tracker import closestpeak_tracking, deterministic_tracking

from difftract.phantom import PhantomConfig, simulate
from difftract.reconst.csd import CsdModel
from difftract.reconst.dti import TensorModel
from difftract.tracking.getters import make_getter
from difftract.tracking.seeding import random_seeds
from difftract.tracking.sh_field import SHField
from difftract.tracking.stopping import BinaryCriterion, ThresholdCriterion
from difftract.tracking.tracker import Tracker, TrackingParams


def setup(seeds_per_voxel: int):
    from dipy.core.gradients import gradient_table

    p = simulate(PhantomConfig(preset="fibercup", seed=0))
    gtab = gradient_table(p.bvals, bvecs=p.bvecs)
    fod = CsdModel(gtab, lmax=8, legacy=True).fit(p.data, p.mask).coeffs
    fa = TensorModel(gtab).fit(p.data, p.mask).fa
    seeds = random_seeds(p.wm, seeds_per_voxel, torch.Generator().manual_seed(0)).numpy()
    return p, fod, np.nan_to_num(fa), seeds


def world(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return points @ affine[:3, :3].T + affine[:3, 3]


def seed_position(streamline: np.ndarray, seed: np.ndarray) -> int:
    return int(np.argmin(np.linalg.norm(streamline - seed, axis=1)))


def pair_stats(ours: dict, theirs: dict) -> dict:
    """Per pair (same key): count difference and mean distance of seed-aligned points."""
    keys = sorted(set(ours) | set(theirs))
    dcount, dist, unpaired = [], [], 0
    for key in keys:
        if key not in ours or key not in theirs:
            unpaired += 1
            continue
        (a, sa), (b, sb) = ours[key], theirs[key]
        ia, ib = seed_position(a, sa), seed_position(b, sb)
        before, after = min(ia, ib), min(len(a) - ia, len(b) - ib)
        pa, pb = a[ia - before: ia + after], b[ib - before: ib + after]
        dcount.append(abs(len(a) - len(b)))
        dist.append(float(np.linalg.norm(pa - pb, axis=1).mean()))
    dcount, dist = np.array(dcount), np.array(dist)
    total = len(keys)
    ok = ((dcount <= 1) & (dist < 0.05)).sum()
    return {"streamlines_ours": len(ours), "streamlines_dipy": len(theirs), "unpaired": unpaired,
            "same_count": float((dcount == 0).sum() / total), "count_within_1": float((dcount <= 1).sum() / total),
            "mean_dist_lt_0.05mm": float((dist < 0.05).sum() / total), "accepted": float(ok / total),
            "dist_percentiles_mm": {q: float(np.percentile(dist, q)) if len(dist) else None
                                    for q in (50, 90, 99, 100)}}


def run(method, p, fod, fa, seeds, criterion, step, angle, max_len):
    vox_seeds_world = world(seeds, p.affine)
    if criterion == "binary":
        dipy_sc, ours_sc = BinaryStoppingCriterion(p.wm), BinaryCriterion(p.wm)
    else:
        dipy_sc, ours_sc = ThresholdStoppingCriterion(fa, 0.2), ThresholdCriterion(fa, 0.2)
    common = dict(sh=fod, step_size=step, max_angle=angle, min_len=2, max_len=max_len, save_seeds=True)
    t0 = time.perf_counter()
    if method == "det":
        out = list(deterministic_tracking(vox_seeds_world, dipy_sc, p.affine, random_seed=1, nbr_threads=2, **common))
    else:
        out = list(closestpeak_tracking(vox_seeds_world, dipy_sc, p.affine, **common))
    t_dipy = time.perf_counter() - t0
    theirs, rank = {}, {}
    for s, seed in out:
        if method == "closest" and len(s) < int(2 / step):   # DIPY's LocalTracking returns all lengths
            continue
        k = tuple(np.round(seed, 9))
        rank[k] = rank.get(k, -1) + 1
        theirs[(k, rank[k])] = (np.asarray(s), seed)

    getter = make_getter(method, sh=SHField(fod, legacy=True), max_angle=angle)
    tracker = Tracker(getter, ours_sc, [float(v) for v in np.linalg.norm(p.affine[:3, :3], axis=0)],
                      TrackingParams(step_mm=step, min_len_mm=2, max_len_mm=max_len), dtype=torch.float64)
    t0 = time.perf_counter()
    chunks = list(tracker.track(seeds))
    t_ours = time.perf_counter() - t0
    ours, rank = {}, {}
    for c in chunks:
        for s, i in zip(c.split(), c.seed_index.tolist()):
            seed = vox_seeds_world[i]
            k = tuple(np.round(seed, 9))
            rank[k] = rank.get(k, -1) + 1
            ours[(k, rank[k])] = (world(s.numpy(), p.affine), seed)
    stats = pair_stats(ours, theirs)
    stats.update(seconds_dipy=t_dipy, seconds_ours=t_ours)
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one seed in every 4th white-matter voxel")
    ap.add_argument("--seeds-per-voxel", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(2)
    p, fod, fa, seeds = setup(args.seeds_per_voxel)
    if args.quick:
        seeds = seeds[::4 * args.seeds_per_voxel]
    print(f"fibercup {p.shape}, {len(seeds)} seeds, CSD lmax 8 (legacy basis), float64")
    results = {}
    configs = [("det", "binary", 0.5, 30, 200), ("det", "fa", 0.2, 20, 500), ("det", "binary", 1.0, 45, 250),
               ("closest", "binary", 0.5, 60, 200), ("closest", "fa", 1.0, 45, 250)]
    print(f"{'method':8} {'stop':6} {'step':>4} {'angle':>5} {'ours':>6} {'dipy':>6} {'unpair':>6} {'n+-1':>7} "
          f"{'<0.05mm':>7} {'accept':>7} {'p99 mm':>8} {'max mm':>8}")
    for method, crit, step, angle, max_len in configs:
        r = run(method, p, fod, fa, seeds, crit, step, angle, max_len)
        results[f"{method}_{crit}_step{step}_angle{angle}"] = r
        q = r["dist_percentiles_mm"]
        print(f"{method:8} {crit:6} {step:4} {angle:5} {r['streamlines_ours']:6} {r['streamlines_dipy']:6} "
              f"{r['unpaired']:6} {r['count_within_1']:7.2%} {r['mean_dist_lt_0.05mm']:7.2%} {r['accepted']:7.2%} "
              f"{q[99]:8.2e} {q[100]:8.2e}")
    print(json.dumps({"benchmark": "compare_dipy_tracking", "seeds": int(len(seeds)), "results": results}))


if __name__ == "__main__":
    main()
