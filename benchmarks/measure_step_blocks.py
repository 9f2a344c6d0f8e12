"""DDTracking's tracking step on a CPU: all rows at once against blocks of rows (``block_rows``).

Run: ``.venv/bin/python benchmarks/measure_step_blocks.py SH [--model full|fast] [--rows N]``
with the signal SH a run wrote (``difftract run W/brain_9004 --method ddtracking`` writes
``sh.nii.gz``). One thread (as each tracking worker), ``N`` points drawn at random in the
volume's non-zero voxels, unguided. Prints seconds per step for each block size and the
largest difference from all rows at once, then one JSON object as the last line.
"""
from __future__ import annotations

import difftract  # noqa: F401  first, before torch: passive OpenMP waits (difftract.threads)

import argparse
import json
import time

import nibabel as nib
import numpy as np
import torch
from torch.nn import functional as F

from difftract.models.ddtracking.getter import DDTrackingGetter, load_ddtracking


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sh", help="the signal SH (X, Y, Z, 28), e.g. a run's sh.nii.gz")
    ap.add_argument("--model", default="full", choices=("full", "fast"))
    ap.add_argument("--rows", type=int, default=13_600, help="rows of the step (a whole-brain chunk: 13,618)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, _ = load_ddtracking(model=args.model)
    sh = np.asarray(nib.load(args.sh).dataobj, dtype=np.float32)
    getter = DDTrackingGetter(model, sh)
    rng = np.random.default_rng(0)
    voxels = np.argwhere(np.abs(sh).sum(-1) > 0)
    points = torch.as_tensor(voxels[rng.choice(len(voxels), args.rows)] + rng.uniform(-0.5, 0.5, (args.rows, 3)),
                             dtype=torch.float32)
    prev = F.normalize(torch.as_tensor(rng.normal(size=(args.rows, 3)), dtype=torch.float32), dim=-1)
    h = getter.network.initial(args.rows)

    def step(block_rows: int) -> tuple[float, torch.Tensor]:
        getter.block_rows = block_rows
        getter.directions(points, prev, {"h": h})                        # warm-up
        start = time.perf_counter()
        for _ in range(args.repeats):
            dirs, _, _ = getter.directions(points, prev, {"h": h})
        return (time.perf_counter() - start) / args.repeats, dirs

    whole_s, whole = step(args.rows)
    rows = {"all": {"s_per_step": whole_s, "speedup": 1.0, "max_diff": 0.0}}
    print(f"{args.model}, {args.rows:,} rows, one thread: all at once {whole_s:.3f} s per step")
    for block in (4096, 2048, 1024, 512):
        seconds, dirs = step(block)
        diff = float((dirs - whole).abs().max())
        rows[block] = {"s_per_step": seconds, "speedup": whole_s / seconds, "max_diff": diff}
        print(f"  blocks of {block:5d}: {seconds:.3f} s per step, {whole_s / seconds:.2f}x, "
              f"largest difference {diff:.1e}")
    print(json.dumps({"model": args.model, "rows": args.rows, "blocks": rows}))


if __name__ == "__main__":
    main()
