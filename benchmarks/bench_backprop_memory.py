"""Memory and time of backpropagation through the propagator: plain, checkpointed, truncated.

Run: ``.venv/bin/python benchmarks/bench_backprop_memory.py [--seeds 3000] [--steps 300]``
(about 3 minutes on 2 CPU cores).

Field: the WLS tensor of the default fibercup phantom (seed 0), its principal directions
as a ``peak`` field with gradients to the tensor elements. ``--seeds`` seeds in the white
matter, each propagated ``--steps`` RK4 steps of 1 mm (fixed shape: stopped streamlines stay
in the batch, so this is the worst case), then a loss on every point and a backward pass to
the tensor field. Each mode runs in a fresh process, whose peak resident memory (``ru_maxrss``)
is the figure; the gradient of each mode is compared with the plain one. The last stdout
line is one JSON object.

Targets (``--check`` exits 1 when a hard one is missed or a mode's process failed, so its row
is unmeasured; ``--help`` lists them): every mode's row measured; checkpointing gives the
plain gradient ("exact gradients", README: 7e-8 and 3e-8 relative; checked to 1e-5, float32
rounding over 300 RK4 steps, where tests/learn/test_propagate.py checks float64 to 1e-9);
checkpointing every 10 steps needs less graph memory (peak RSS less the process's own, before
tracking) than plain ("a fraction of the memory"; README 0.46 GB against 2.6 GB). At small
``--seeds``/``--steps`` the graph is small against RSS noise: when plain's graph is under
100 MB the memory target is skipped (said in the table).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from _check import Target, parse_args

MODES = {"plain": {}, "checkpoint every 10": {"checkpoint_every": 10}, "checkpoint every 30": {"checkpoint_every": 30},
         "truncate every 10": {"truncate_every": 10}}


TARGETS = [
    *(Target(f"row_{m.replace(' ', '_')}", "measured", None, "README: the memory table (a row per mode)")
      for m in MODES),
    *(Target(f"grad_rel_diff_checkpoint_{k}", "<=", 1e-5, f"README: checkpointing gives exact gradients "
             f"({'7e-8' if k == 10 else '3e-8'} measured); 1e-5 is float32 rounding") for k in (10, 30)),
    Target("graph_memory_ratio_checkpoint_10", "<", 1.0, "README: checkpointing every 10 steps shrinks the graph "
           "(2.6 GB -> 0.46 GB); checked: less than plain"),
]


MIN_GRAPH_MB = 100     # below this, peak-RSS differences are noise (the full run's plain graph is 2.6 GB)


def child(mode: str, seeds_n: int, steps: int) -> None:
    import numpy as np
    import torch
    from dipy.core.gradients import gradient_table

    from difftract.learn import propagate, tensor_peaks
    from difftract.phantom import PhantomConfig, simulate
    from difftract.reconst.dti import TensorModel
    from difftract.tracking.getters import PeakGetter
    from difftract.tracking.seeding import random_seeds
    from difftract.tracking.stopping import BinaryCriterion

    torch.set_num_threads(2)
    ph = simulate(PhantomConfig(preset="fibercup", seed=0))
    fit = TensorModel(gradient_table(ph.bvals, bvecs=ph.bvecs), "WLS").fit(ph.data, ph.mask, progress=False)
    lt = torch.as_tensor(fit.lower_triangular() * 1e3, dtype=torch.float32).requires_grad_(True)
    seeds = random_seeds(ph.wm, 1, torch.Generator().manual_seed(0), torch.float32)
    seeds = seeds[torch.randperm(len(seeds), generator=torch.Generator().manual_seed(1))[:seeds_n]]
    seeds = seeds.repeat(-(-seeds_n // len(seeds)), 1)[:seeds_n]
    wm = torch.as_tensor(ph.wm)
    with torch.no_grad():
        first = PeakGetter(tensor_peaks(lt, wm), 60.0).seed_directions(seeds)
    dirs = torch.zeros_like(seeds)
    dirs[first[1]] = first[0]
    dirs[dirs.norm(dim=1) == 0] = torch.tensor([1.0, 0.0, 0.0])
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    getter = PeakGetter(tensor_peaks(lt, wm), 60.0)
    paths = propagate(getter, seeds, dirs, steps, step_mm=1.0, voxel_sizes=(ph.voxel_size,) * 3, integrator="rk4",
                      criterion=BinaryCriterion(ph.wm), **MODES[mode])
    loss = (paths.points - seeds[:, None]).square().sum(-1).mean()
    loss.backward()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_rss_mb": peak / 1024, "before_mb": base / 1024, "seconds": seconds,
                      "grad": lt.grad.flatten()[:: max(1, lt.grad.numel() // 5000)].tolist(),
                      "mean_length": float(paths.length.float().mean())}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3000)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    if "--child" in sys.argv:
        args = ap.parse_args()
        child(args.child, args.seeds, args.steps)
        return
    args, check = parse_args(ap, "bench_backprop_memory", TARGETS)
    import numpy as np

    rows, failed = {}, {}
    for mode in MODES:
        out = subprocess.run([sys.executable, __file__, "--child", mode, "--seeds", str(args.seeds), "--steps",
                              str(args.steps)], capture_output=True, text=True)
        try:
            if out.returncode != 0:
                raise RuntimeError(f"exit {out.returncode}: {(out.stderr.strip().splitlines() or [''])[-1]}")
            rows[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        except Exception as e:          # the row is said to be missing and fails under --check
            failed[mode] = f"the {mode!r} process failed: {type(e).__name__}: {e}"
            print(failed[mode])
    print(f"{args.seeds} streamlines x {args.steps} RK4 steps (fixed shape), backward to the tensor field")
    print(f"{'mode':22s} {'peak RSS MB':>12s} {'time s':>8s} {'grad rel. diff':>15s}")
    plain = np.asarray(rows["plain"]["grad"]) if "plain" in rows else None
    for mode, r in rows.items():
        g = np.asarray(r.pop("grad"))
        r["grad_rel_diff"] = (float(np.linalg.norm(g - plain) / max(np.linalg.norm(plain), 1e-30))
                              if plain is not None else None)
        r["graph_mb"] = r["peak_rss_mb"] - r["before_mb"]
        diff = f"{r['grad_rel_diff']:15.2e}" if r["grad_rel_diff"] is not None else f"{'-':>15s}"
        print(f"{mode:22s} {r['peak_rss_mb']:12.0f} {r['seconds']:8.1f} {diff}")
    for mode in MODES:
        name = f"row_{mode.replace(' ', '_')}"
        if mode in rows:
            check.measure(name, rows[mode]["peak_rss_mb"])
        else:
            check.unmeasured(name, failed[mode])
    for k in (10, 30):
        mode = f"checkpoint every {k}"
        if mode in rows and plain is not None:
            check.measure(f"grad_rel_diff_checkpoint_{k}", rows[mode]["grad_rel_diff"])
        else:
            check.unmeasured(f"grad_rel_diff_checkpoint_{k}", failed.get(mode) or failed["plain"])
    if "plain" in rows and rows["plain"]["graph_mb"] < MIN_GRAPH_MB:
        check.skip("graph_memory_ratio_checkpoint_10", f"plain's graph ({rows['plain']['graph_mb']:.0f} MB above "
                   f"the process's peak) is under {MIN_GRAPH_MB} MB, within RSS noise: a run this small cannot "
                   "show it")
    elif "checkpoint every 10" in rows and "plain" in rows:
        check.measure("graph_memory_ratio_checkpoint_10",
                      rows["checkpoint every 10"]["graph_mb"] / max(rows["plain"]["graph_mb"], 1e-9))
    else:
        check.unmeasured("graph_memory_ratio_checkpoint_10", failed.get("checkpoint every 10") or failed["plain"])
    check.finish({"benchmark": "bench_backprop_memory", "seeds": args.seeds, "steps": args.steps, "rows": rows})


if __name__ == "__main__":
    main()
