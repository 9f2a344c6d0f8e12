"""The fixed cost of a tracking step, and how many steps a run takes: what a persistent pool of
streamlines (refilled as they finish) could save over chunks tracked to the end.

Run: ``.venv/bin/python benchmarks/measure_step_overhead.py FOD WM`` with an fODF and a
white-matter mask, e.g. the brain phantom's (``difftract simulate b --preset brain``,
``difftract fit csd b/dwi.nii.gz b/dwi.bval b/dwi.bvec --mask b/mask.nii.gz --out fod.nii.gz``,
then ``fod.nii.gz b/wm.nii.gz``). One worker, one thread, ``det``, a seed at every WM voxel.
Prints the figures, then one JSON object as the last line (``docs/performance.md``).
"""
import difftract  # noqa: F401  first, before torch: passive OpenMP waits (difftract.threads)
import json, sys, time, torch, numpy as np, nibabel as nib
from difftract.tracking.sh_field import SHField
from difftract.tracking.getters import make_getter
from difftract.tracking.stopping import BinaryCriterion
from difftract.tracking.tracker import Tracker, TrackingParams, preferred_chunk_size
from difftract.tracking.seeding import grid_seeds
torch.set_num_threads(1)
fod = nib.load(sys.argv[1]).get_fdata(dtype=np.float32)
wm = nib.load(sys.argv[2]).get_fdata() > 0
seeds = grid_seeds(wm, 1)
g = make_getter("det", sh=SHField(fod, legacy=False), max_angle=45)
widths = []
orig = type(g).directions
def counting(self, points, prev, state):
    widths.append(len(points))
    return orig(self, points, prev, state)
type(g).directions = counting
tr = Tracker(g, BinaryCriterion(wm), (2, 2, 2), TrackingParams(), chunk_size=10**6, workers=1)
out = list(tr.track(seeds[:3000]))[0]
best = seeds[out.seed_index[int(out.lengths.argmax())]][None]
widths.clear()
t = time.perf_counter(); o = list(tr.track(best))[0]; dt = time.perf_counter() - t
c_iter = dt / len(widths)
print(f"width-1 iteration (the fixed cost of a step): {c_iter * 1e3:.3f} ms over {len(widths)} iterations")
chunk = preferred_chunk_size(len(seeds), "cpu")
tr = Tracker(g, BinaryCriterion(wm), (2, 2, 2), TrackingParams(), chunk_size=chunk, workers=1)
widths.clear()
t = time.perf_counter(); outs = list(tr.track(seeds)); dt = time.perf_counter() - t
w = np.array(widths); pts = w.sum()
full = chunk
pool_iters = int(np.ceil(pts / full)) + int(w.size / tr.n_chunks(len(seeds)) / 2)   # full-width steps, then one drain
print(f"run: {len(seeds)} seeds in chunks of {chunk}: {dt:.2f} s, {w.size} iterations, {pts} direction queries "
      f"(mean width {w.mean():.0f}; {100 * (w < 0.1 * full).mean():.0f}% of iterations under 10% of the chunk)")
print(f"fixed cost of all iterations: {w.size * c_iter:.2f} s ({100 * w.size * c_iter / dt:.1f}% of the run); "
      f"a pool of width {full} would need about {pool_iters} iterations: saves at most "
      f"{(w.size - pool_iters) * c_iter:.2f} s ({100 * (w.size - pool_iters) * c_iter / dt:.1f}%)")
print(json.dumps({"benchmark": "measure_step_overhead", "step_fixed_ms": c_iter * 1e3, "seeds": len(seeds),
                  "chunk": chunk, "seconds": dt, "iterations": int(w.size), "queries": int(pts),
                  "pool_iterations": pool_iters, "pool_saves_s": (w.size - pool_iters) * c_iter}))
