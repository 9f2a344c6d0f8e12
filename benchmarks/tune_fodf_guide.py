"""Choose DDTracking's ``--fodf-guide`` weight on validation phantoms, never on the test ones.

Run: ``.venv/bin/python benchmarks/tune_fodf_guide.py --work val_work --model full --guides 0,0.3,0.5,0.7``
(about 6 minutes for ``full`` on 2 cores, 2 for ``fast``; ``--stochastic`` for the S = 5 sampler).

The validation phantoms are trained on by no model and tested on by no benchmark: our
``random`` preset with seeds 8001-8003 and a ``brain-random`` geometry (seed 8004), below the
test range and far from the streamed training seeds (``phantom/splits.py``), and DIPY's
signal on the foreign ``random`` and ``fibercup`` layouts (seeds 9201, 9202; foreign phantoms
are test data by construction, so their seeds lie in the test range, but ``bench_ddtracking.py``
tests on the ``crossroads`` layout, seed 9101, only).
Scheme, seeds, mask and settings are ``bench_ddtracking.py``'s. The rule that picks the
weight (fixed before the test run, README "Learned tracking"): the largest mean F1 whose
mean VC stays within 0.02 of the network alone. ``--symmetries none,inversion,perms`` adds, at each
weight, the rows averaged over those groups of grid symmetries (``track --symmetries``); the
weight is still chosen among the rows without them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from bench_ddtracking import SCHEME, Subject, run
from difftract.eval.tractometer import score
from difftract.models.ddtracking.getter import load_named
from difftract.models.ddtracking.guide import GuideConfig
from difftract.models.ddtracking.symmetrise import check_symmetries
from difftract.phantom import PhantomConfig, save_phantom, simulate
from foreign import ForeignConfig, build_foreign, save_foreign

OURS = (("random", 8001), ("random", 8002), ("random", 8003), ("brain-random", 8004))
FOREIGN = (("random", 9201), ("fibercup", 9202))
VC_SLACK = 0.02


def phantoms(work: Path) -> list[Path]:
    """Write (once) and list the validation phantoms."""
    out = []
    for preset, seed in OURS:
        d = work / f"{preset}_{seed}"
        if not (d / "gt" / "scoring.json").exists():
            save_phantom(simulate(PhantomConfig(preset=preset, seed=seed, **SCHEME)), d, force=True)
        out.append(d)
    for layout, seed in FOREIGN:
        config, d = ForeignConfig(layout=layout, seed=seed, **SCHEME), work / f"foreign_{layout}_{seed}"
        if not (d / "gt" / "scoring.json").exists():
            save_foreign(build_foreign(config), config, d, force=True)
        out.append(d)
    return out


def row(weight: float, symmetries: str) -> str:
    """A row's name: its guide weight, and its symmetries unless none."""
    return f"W = {weight:g}" + ("" if symmetries == "none" else f", G = {symmetries}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="where the validation phantoms are written")
    ap.add_argument("--model", default="full", help="a shipped model (full, fast) or a weights file")
    ap.add_argument("--guides", default="0,0.3,0.5,0.7", help="--fodf-guide weights to compare (default: %(default)s)")
    ap.add_argument("--stochastic", action="store_true", help="the stochastic S = 5 sampler instead of S = 1")
    ap.add_argument("--classical", action="store_true", help="add the det and prob rows")
    ap.add_argument("--symmetries", default="none", help="grid symmetries to average over, comma-separated "
                    "(models/ddtracking/symmetrise.py; default: %(default)s)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_named(args.model)
    weights = [float(w) for w in args.guides.split(",")]
    for w in weights:
        GuideConfig(weight=w)                     # refused before the phantoms are simulated
    groups = [check_symmetries(g) for g in args.symmetries.split(",")]
    steps = 5 if args.stochastic else 1
    rows: dict[str, list[list[float]]] = {}
    for directory in phantoms(args.work):
        s = Subject(directory, 1, 3000)
        trackers = {m: s.classical(m) for m in (("det", "prob") if args.classical else ())}
        trackers |= {row(w, g): s.learned(loaded, steps, args.stochastic, w, symmetries=g, chunk_size=10_000)
                     for g in groups for w in weights}
        for name, tracker in trackers.items():
            lines, seconds = run(tracker, s.seeds)
            r = score(lines, s.config).scores
            rows.setdefault(name, []).append([r["VS_ratio"], r["NC_ratio"], r["IB"], r["mean_f1"]])
            print(f"{directory.name:24} {name:22} VC {r['VS_ratio']:.3f} NC {r['NC_ratio']:.3f} IB {r['IB']:3} "
                  f"F1 {r['mean_f1']:.3f} ({seconds:.1f} s)", flush=True)
    print(f"\nmeans over {len(OURS) + len(FOREIGN)} validation phantoms ({args.model}, S = {steps}"
          f"{', stochastic' if args.stochastic else ''}):")
    means = {name: np.mean(v, axis=0) for name, v in rows.items()}
    for name, (vc, nc, ib, f1) in means.items():
        print(f"  {name:22} VC {vc:.3f} NC {nc:.3f} IB {ib:5.1f} F1 {f1:.3f}")
    plain = {row(w, "none") for w in weights}          # the weight is chosen among these
    if groups != ["none"]:
        print("(symmetries compared at each weight; the weight is chosen among the rows without them)")
    alone = means.get(row(0.0, "none"))
    if alone is not None:
        allowed = {n: m for n, m in means.items() if n in plain and m[0] >= alone[0] - VC_SLACK}
        chosen = max(allowed, key=lambda n: allowed[n][3])
        print(f"chosen (largest F1 with VC within {VC_SLACK} of the network alone): {chosen}")
        if not args.stochastic:     # the default of track and run for these weights (models/ddtracking/defaults.py)
            print(f'VALIDATED_GUIDES entry: "{loaded[1]["sha256"]}": {chosen.removeprefix("W = ")}')


if __name__ == "__main__":
    main()
