"""The classical reference on a ground-truth phantom: DIPY's CSD trackers and difftract's.

Run: ``.venv/bin/python benchmarks/bench_classical_reference.py [--phantom DIR | --preset brain]``
(the brain phantom at 2 mm with 5,000 seeds: about 10 minutes on 2 cores). Prints a
Tractometer table, then one JSON object as the last line.

This is the bar the learned trackers must clear on the same phantom: every tracker reads
the same CSD fODF (difftract's fit, lmax 8, DIPY's legacy descoteaux07 basis, which DIPY's
trackers assume), starts from the same seeds (``--seeds`` random points in random
white-matter voxels, seed 0) and stops at the same binary white-matter mask; step 1 mm (the
voxel size or less), 45 degrees, 20-250 mm.

Rows:

- ``dipy det``: ``dipy.tracking.tracker.deterministic_tracking`` (2 threads);
- ``dipy prob``: ``dipy.tracking.tracker.probabilistic_tracking`` (2 threads);
- ``difftract det`` / ``difftract prob``: the same rules in difftract's batched tracker;
- ``ground truth``: the phantom's own streamlines (the ceiling).

Columns: VC (valid connections), IC, NC, VB, IB, mean OL, mean OR, mean F1, streamline
counts and tracking seconds. Streamlines shorter than 20 mm are dropped from every row
before scoring (DIPY's trackers return all lengths).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from dipy.tracking.stopping_criterion import BinaryStoppingCriterion
from dipy.tracking.tracker import deterministic_tracking, probabilistic_tracking

from _check import Target, parse_args
from difftract.eval.tractometer import load_scoring, score
from difftract.io.dwi import load_subject
from difftract.io.tractogram import load_tractogram
from difftract.phantom import PhantomConfig, save_phantom, simulate
from difftract.reconst.csd import CsdModel
from difftract.tracking.getters import make_getter
from difftract.tracking.sh_field import SHField
from difftract.tracking.stopping import BinaryCriterion
from difftract.tracking.tracker import Tracker, TrackingParams

KEYS = ("VS_ratio", "IC_ratio", "NC_ratio", "VB", "IB", "mean_OL", "mean_OR_vs", "mean_f1")
TARGETS = [
    Target("gt_vc", ">=", 0.99, "issue 18: the phantom's ground truth scores VC >= 0.99"),
    Target("det_f1_vs_dipy", ">=", -0.05,
           "difftract det's F1 minus DIPY det's on the same field and seeds (the trackers are equal)"),
    Target("dipy_det_f1", "measured", None, "issue 18: the classical reference the learned models must beat"),
    Target("difftract_prob_f1", "measured", None, "issue 18: the classical reference the learned models must beat"),
]
MIN_LEN_MM, MAX_LEN_MM, ANGLE = 20.0, 250.0, 45.0


def phantom_dir(args, work: Path) -> Path:
    if args.phantom is not None:
        return args.phantom
    extra = {} if args.voxel_size is None else {"voxel_size": args.voxel_size}
    config = PhantomConfig(preset=args.preset, seed=args.phantom_seed, **extra)
    out = work / "phantom"
    t0 = time.perf_counter()
    save_phantom(simulate(config), out)
    print(f"simulated --preset {args.preset} --seed {args.phantom_seed} in {time.perf_counter() - t0:.0f} s")
    return out


def voxel_streamlines(world: list[np.ndarray], affine: np.ndarray, voxel_mm: float) -> list[np.ndarray]:
    """World-mm streamlines to voxel space, dropping those shorter than MIN_LEN_MM."""
    inv = np.linalg.inv(affine)
    out = []
    for s in world:
        s = np.asarray(s, dtype=np.float64)
        if len(s) > 1 and np.linalg.norm(np.diff(s, axis=0), axis=1).sum() >= MIN_LEN_MM:
            out.append(s @ inv[:3, :3].T + inv[:3, 3])
    return out


def row(streamlines: list[np.ndarray], config, seconds: float | None) -> dict:
    scores = score(streamlines, config).scores
    r = {k: scores[k] for k in KEYS} | {"n": len(streamlines)}
    if seconds is not None:
        r["seconds"] = round(seconds, 2)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--phantom", type=Path, help="a phantom directory (default: simulate --preset)")
    ap.add_argument("--preset", default="brain", help="preset to simulate when no --phantom (default: brain)")
    ap.add_argument("--voxel-size", type=float, default=None, help="simulated phantom voxel size, mm")
    ap.add_argument("--phantom-seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, default=5000, help="random seeds in white matter (default: 5000)")
    args, check = parse_args(ap, "bench_classical_reference", TARGETS)
    torch.set_num_threads(2)
    figures: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        ph = phantom_dir(args, Path(tmp))
        config = load_scoring(ph)
        dwi = load_subject(ph)
        wm = np.asarray(nib.load(ph / "wm.nii.gz").dataobj) > 0
        affine = dwi.affine
        voxel = [float(v) for v in dwi.voxel_sizes]
        step = min(1.0, min(voxel))
        t0 = time.perf_counter()
        fod = CsdModel(dwi.gtab, lmax=8, legacy=True).fit(dwi.data, dwi.mask, progress=False).coeffs
        figures["csd_seconds"] = round(time.perf_counter() - t0, 1)

        rng = np.random.default_rng(0)
        voxels = np.argwhere(wm)
        pick = voxels[rng.integers(0, len(voxels), args.seeds)]
        seeds = pick + rng.uniform(-0.5, 0.5, size=pick.shape)
        seeds_world = seeds @ affine[:3, :3].T + affine[:3, 3]
        figures.update(phantom=str(ph) if args.phantom else f"{args.preset} seed {args.phantom_seed}",
                       shape=list(wm.shape), voxel_mm=voxel, wm_voxels=int(wm.sum()), seeds=int(len(seeds)),
                       step_mm=step)

        rows: dict[str, dict] = {}
        gt = load_tractogram(ph / "tractogram.trk", reference=ph / "mask.nii.gz")
        rows["ground truth"] = row(list(gt.streamlines), config, None)
        common = dict(sh=fod, step_size=step, max_angle=ANGLE, min_len=2, max_len=MAX_LEN_MM)
        for name, fn in (("dipy det", deterministic_tracking), ("dipy prob", probabilistic_tracking)):
            t0 = time.perf_counter()
            out = list(fn(seeds_world, BinaryStoppingCriterion(wm.astype(float)), affine, random_seed=1,
                          nbr_threads=2, **common))
            seconds = time.perf_counter() - t0
            rows[name] = row(voxel_streamlines(out, affine, min(voxel)), config, seconds)
            print(f"{name}: {rows[name]['n']} streamlines in {seconds:.1f} s", flush=True)
        field = SHField(fod, legacy=True)
        params = TrackingParams(step_mm=step, min_len_mm=MIN_LEN_MM, max_len_mm=MAX_LEN_MM)
        for method in ("det", "prob"):
            tracker = Tracker(make_getter(method, sh=field, max_angle=ANGLE), BinaryCriterion(wm), voxel, params)
            t0 = time.perf_counter()
            streamlines = [s.numpy() for c in tracker.track(torch.as_tensor(seeds), seed=0) for s in c.split()]
            seconds = time.perf_counter() - t0
            rows[f"difftract {method}"] = row(streamlines, config, seconds)
            print(f"difftract {method}: {len(streamlines)} streamlines in {seconds:.1f} s", flush=True)

    print(f"\n{figures['phantom']}: {figures['shape']} at {voxel[0]:g} mm, {len(config.bundles)} bundles, "
          f"{figures['seeds']} seeds in {figures['wm_voxels']} WM voxels; CSD lmax 8, {step:g} mm, {ANGLE:g} deg")
    print(f"{'tracker':15} {'n':>6} {'VC':>6} {'IC':>6} {'NC':>6} {'VB':>3} {'IB':>4} {'OL':>6} {'OR':>6} "
          f"{'F1':>6} {'s':>7}")
    for name, r in rows.items():
        print(f"{name:15} {r['n']:6} {r['VS_ratio']:6.3f} {r['IC_ratio']:6.3f} {r['NC_ratio']:6.3f} {r['VB']:3} "
              f"{r['IB']:4} {r['mean_OL']:6.3f} {r['mean_OR_vs']:6.3f} {r['mean_f1']:6.3f} "
              f"{r.get('seconds', float('nan')):7.1f}")
    check.measure("gt_vc", rows["ground truth"]["VS_ratio"])
    check.measure("det_f1_vs_dipy", rows["difftract det"]["mean_f1"] - rows["dipy det"]["mean_f1"])
    check.measure("dipy_det_f1", rows["dipy det"]["mean_f1"])
    check.measure("difftract_prob_f1", rows["difftract prob"]["mean_f1"])
    # difftract against DIPY, the same rule on the same field and seeds, in this run
    figures["ratios_vs_dipy"] = {
        method: {"F1": rows[f"difftract {method}"]["mean_f1"] / rows[f"dipy {method}"]["mean_f1"],
                 "VC": rows[f"difftract {method}"]["VS_ratio"] / rows[f"dipy {method}"]["VS_ratio"],
                 "streamlines_per_s": (rows[f"difftract {method}"]["n"] / rows[f"difftract {method}"]["seconds"])
                 / (rows[f"dipy {method}"]["n"] / rows[f"dipy {method}"]["seconds"])}
        for method in ("det", "prob")}
    for method, r in figures["ratios_vs_dipy"].items():
        print(f"difftract / DIPY, {method}: F1 {r['F1']:.3f}, VC {r['VC']:.3f}, streamlines/s {r['streamlines_per_s']:.2f}")
    figures["rows"] = rows
    check.finish(figures)


if __name__ == "__main__":
    main()
