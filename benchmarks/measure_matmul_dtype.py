"""DDTracking's speed with float32 against bfloat16 products (``track --matmul-dtype``), alternated.

Run: ``.venv/bin/python benchmarks/measure_matmul_dtype.py W/seen_fibercup_0 [--model fast full]
[--seeds 10000] [--threads 2] [--repeats 2]`` on a phantom directory (the speed run's, from
``bench_ddtracking.py --work W``). Each model tracks the same seeds, guided as by default, with
the tracker's own chunks; float32 and bfloat16 take turns, after one untimed warm-up run each
(oneDNN builds its bfloat16 kernels then), so that the machine's drift falls on both; ``det`` at
the same step takes its turn too, the reference of the issue's speed figures. Prints seeds/s per
run, the ratio of the medians and each dtype's ratio to ``det``, then one JSON object as the
last line.
"""
from __future__ import annotations

import difftract  # noqa: F401  first, before torch: passive OpenMP waits (difftract.threads)

import argparse
import json
import statistics
from pathlib import Path

import torch

from bench_ddtracking import Subject, run
from difftract.models.ddtracking.defaults import TrackingDefaults
from difftract.models.ddtracking.getter import load_ddtracking
from difftract.tracking.seeding import random_seeds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("phantom", type=Path, help="a phantom directory (dwi.*, wm.nii.gz, gt/)")
    ap.add_argument("--model", nargs="+", default=["fast", "full"], choices=("fast", "full"))
    ap.add_argument("--seeds", type=int, default=10_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    s = Subject(args.phantom, 1, 10)
    seeds = random_seeds(s.wm, -(-args.seeds // int(s.wm.sum())), torch.Generator().manual_seed(1))[:args.seeds]
    out = {}
    for name in args.model:
        loaded = load_ddtracking(model=name)
        weight = TrackingDefaults.from_meta(loaded[1]).fodf_guide
        rules = {str(dtype).removeprefix("torch."): s.learned(loaded, 1, False, weight, dtype)
                 for dtype in (torch.float32, torch.bfloat16)}
        rules["det"] = s.classical("det", TrackingDefaults.from_meta(loaded[1]).step_mm(s.vox))   # at the same step
        for tracker in rules.values():
            run(tracker, seeds)                                           # warm-up, untimed
        rates = {dtype: [] for dtype in rules}
        for _ in range(args.repeats):
            for dtype, tracker in rules.items():
                lines, seconds = run(tracker, seeds)
                rates[dtype].append(len(seeds) / seconds)
                print(f"{name} (guide {weight:g}) {dtype:8}: {rates[dtype][-1]:8.1f} seeds/s, {len(lines)} streamlines",
                      flush=True)
        median = {rule: statistics.median(r) for rule, r in rates.items()}
        ratio = median["bfloat16"] / median["float32"]
        of_det = {d: median[d] / median["det"] for d in ("float32", "bfloat16")}
        print(f"{name}: bfloat16 / float32 = {ratio:.2f}x; of det's rate: float32 {of_det['float32']:.3f}, "
              f"bfloat16 {of_det['bfloat16']:.3f} ({args.threads} threads, {len(seeds)} seeds)")
        out[name] = {"seeds_per_s": rates, "ratio": ratio, "of_det": of_det}
    print(json.dumps({"threads": args.threads, "seeds": len(seeds), "models": out}))


if __name__ == "__main__":
    main()
