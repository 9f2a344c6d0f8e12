"""Training on subjects without end: QCG-DTI learns from fresh streamed phantoms; cost of a subject.

Run: ``.venv/bin/python benchmarks/bench_stream.py [--work W] [--epochs 6]`` (12 minutes on
2 CPU cores shared with other jobs; ``--device cuda --stream-workers N`` on a GPU machine).

1. Seconds per subject: each stream recipe (phantom preset and the model's preparation)
   makes two fresh training subjects the way the stream's worker does (simulate, then the
   reference fits, on one CPU thread), and the arrays' size is reported.
2. Learning: ``difftract train qcgdti --stream PRESET`` (the command as a user runs it)
   trains on ``--subjects-per-epoch`` new phantoms every epoch, simulated by the background
   worker while the previous epoch trains, and validates on one held-back stream subject.
   The per-epoch losses, the subject seeds and the worker's seconds per subject come from
   the run's metrics and sidecar.

Targets (``--check``): the validation loss of the last epoch is under half the first
epoch's, and no training subject is drawn twice. The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _check import Target, parse_args
from difftract.models.qcgdti.train import QCG_PHANTOM
from difftract.models.ddtracking.data import phantom_arrays as ddtracking_arrays
from difftract.models.qcgdti.data import phantom_arrays as qcgdti_arrays
from difftract.phantom.splits import training_seed
from difftract.training.recipe import SubjectRecipe, phantom_recipe

REPO = Path(__file__).resolve().parents[1]
QCG_SCAN = QCG_PHANTOM   # the scan `train qcgdti --stream` simulates by default
RECIPES = {   # name -> (preset, phantom settings, preparation, its settings)
    "crossing/ddtracking": ("crossing", {}, ddtracking_arrays, {"step": 1.0}),
    "random/ddtracking": ("random", {}, ddtracking_arrays, {"step": 1.0}),
    "crossing/qcgdti": ("crossing", QCG_SCAN, qcgdti_arrays, {}),
    "random/qcgdti": ("random", QCG_SCAN, qcgdti_arrays, {}),
}
TARGETS = [
    Target("val_loss_ratio", "<", 0.5, "issue 18 part 4: the loss falls on fresh streamed subjects "
           "(last epoch's validation loss / first epoch's)"),
    Target("fresh_subjects", "==", True, "issue 18 part 4: no training subject is drawn twice"),
]


def generation_cost(names: list[str], seeds: int) -> dict:
    """Mean seconds and MiB per subject of each recipe (fresh training seeds of stream base 99)."""
    out = {}
    for name in names:
        preset, settings, prepare, prep_settings = RECIPES[name]
        recipe = SubjectRecipe(phantom_recipe(preset, settings), prepare, prep_settings)
        times, sizes = [], []
        for k in range(seeds):
            t0 = time.perf_counter()
            arrays = recipe.make(training_seed(99, k))
            times.append(time.perf_counter() - t0)
            sizes.append(sum(a.nbytes for a in arrays.values()) / 2**20)
        out[name] = {"seconds_per_subject": round(float(np.mean(times)), 2), "seconds": [round(t, 2) for t in times],
                     "mib_per_subject": round(float(np.mean(sizes)), 1)}
        each = ", ".join(map(str, out[name]["seconds"]))
        print(f"{name:22} {out[name]['seconds_per_subject']:6.2f} s/subject ({each})  "
              f"{out[name]['mib_per_subject']:6.1f} MiB", flush=True)
    return out


def train_streamed(work: Path, args: argparse.Namespace) -> dict:
    """Run ``difftract train qcgdti --stream`` and read back its metrics and sidecar."""
    out = work / "qcg.pt"
    command = [sys.executable, "-m", "difftract", "-q", "train", "qcgdti", "--stream", args.preset,
               "--subjects-per-epoch", str(args.subjects_per_epoch), "--epochs", str(args.epochs),
               "--samples-per-epoch", str(args.samples_per_epoch), "--val-samples", "8", "--batch-size", "2",
               "--patch", str(args.patch), "--widths", args.widths, "--lr", "1e-3", "--device", args.device,
               "--stream-workers", str(args.stream_workers), "--out", str(out), "--force"]
    print("$ " + " ".join(command[1:]), flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    subprocess.run(command, check=True, env=env)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in out.with_name("qcg.metrics.jsonl").read_text().splitlines()]
    side = json.loads(out.with_suffix(".json").read_text())
    print(f"{'epoch':>5} {'train loss':>11} {'val loss':>10} {'val RMSE':>9} {'seconds':>8}  subject seeds", flush=True)
    for r in rows:
        print(f"{r['epoch']:5d} {r['train_loss']:11.4g} {r['val_loss']:10.4g} {r['val_rmse_um2_ms']:9.4f} "
              f"{r['seconds']:8.1f}  {r['train_subject_seeds']}")
    seeds = [s for r in rows for s in r["train_subject_seeds"]]
    return {"command": " ".join(command[3:]), "wall_seconds": round(wall, 1), "epochs": rows,
            "worker": side.get("stream", {}), "fresh": len(seeds) == len(set(seeds)),
            "val_loss_ratio": rows[-1]["val_loss"] / rows[0]["val_loss"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    ap.add_argument("--preset", default="random", help="phantom preset of the streamed subjects (default: random)")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--subjects-per-epoch", type=int, default=2)
    ap.add_argument("--samples-per-epoch", type=int, default=16)
    ap.add_argument("--patch", type=int, default=16)
    ap.add_argument("--widths", default="8,16,32")
    ap.add_argument("--device", default="cpu", help="training device (default: cpu)")
    ap.add_argument("--stream-workers", type=int, default=1, help="simulating processes (default: 1)")
    ap.add_argument("--cost-seeds", type=int, default=2, help="subjects timed per recipe (default: 2)")
    ap.add_argument("--recipes", default=",".join(RECIPES), help="recipes timed (default: all)")
    args, check = parse_args(ap, "bench_stream", TARGETS)
    cost = generation_cost([r for r in args.recipes.split(",") if r], args.cost_seeds)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        run = train_streamed(work, args)
    print(f"worker: {run['worker']}; whole run {run['wall_seconds']} s", flush=True)
    check.measure("val_loss_ratio", run["val_loss_ratio"])
    check.measure("fresh_subjects", run["fresh"])
    check.finish({"benchmark": "bench_stream", "generation": cost, "training": run, "cpu_count": os.cpu_count()})


if __name__ == "__main__":
    main()
