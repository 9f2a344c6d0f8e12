"""DDTracking against CSD det/prob in three columns: seen geometry, unseen geometry, foreign signal.

Run: ``.venv/bin/python benchmarks/bench_ddtracking.py --work dd_work [--max-seeds 3000] [--speed-seeds 0]``
(DDTracking tracks about 100 streamlines/s on 2 free CPU cores; with --max-seeds 3000 and no
speed run, 50 minutes and 1.1 GB on 2 cores shared with other jobs at load ~10; the ablation adds
a DDTracking row per variant).

Columns (every phantom is a test subject; none of its seeds was used in training):

- seen geometry: fibercup seed 0, SNR 18, 48 directions at b = 1000, 2 b0. The fibercup
  geometry is fixed, so the training fibercups (seeds 1101-1103) had the same bundles: this
  column measures robustness to noise and acquisition only, and is not a test result.
- unseen geometry: our simulator's ``random`` preset with test seeds (``--unseen-seeds``,
  default 9001; ``phantom/splits.py`` reserves seeds >= 9000 for testing), SNR 20, 32
  directions at b = 1000.
- foreign signal: ``benchmarks/foreign`` (DIPY's ``multi_tensor`` signal and Rician noise on
  our voxelizer's geometry), the hand-made ``crossroads`` slab (a fibercup-like layout never
  used in training) with test seeds (``--foreign-seeds``, default 9101), SNR 20, 32
  directions at b = 1000; ``--foreign-layouts crossroads,random`` adds DIPY signal on random
  geometries.

Tracking, the same for every rule: 1 random seed per white-matter voxel (``--max-seeds N``:
a seeded random subset of N of them, the same for every rule), stop outside the white-matter
mask (nearest voxel), 45 degrees, 20-250 mm, Euler. The classical rules track a CSD fODF
(lmax 8, auto response) with DIPY's defaults (step 1 mm, pmf threshold 0.1); DDTracking
tracks at the step it was trained with (1 voxel, 2 mm here). Rows per phantom: the ground
truth (the ceiling), ``det`` and ``prob`` (CSD), the shipped DDTracking (or ``--weights``)
deterministic S = 1 (``--stochastic`` adds stochastic S = 5); with ``--weights-dir``
holding ``{variant}.pt``, each ablation variant (S = 1) on the unseen column. A column's
figures are the means over its phantoms (VB as a fraction of the bundles).

Then, on the seen phantom: deterministic runs repeat exactly, stochastic runs repeat for the
same seed and differ for another; and the speed of DDTracking on ``--speed-seeds`` seeds
(0: skipped) with det as the reference, on CPU and, when present, on the GPU. The last line
is one JSON object with every figure.

Targets (``--check`` exits 1 when a hard one is missed or a row could not be measured;
``--help`` lists them): the three reproducibility claims of the README; on the unseen and
foreign columns (hard), DDTracking S = 1 at least det's VC and det's F1 (learned >= classical),
and (soft) every bundle found; on the seen column the same ratios are soft (a training
geometry is reported, never tested). With ``--weights-dir`` every ablation variant must be
measured and "the local condition helps both ways" in overlap is checked softly.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from _check import Target, parse_args
from difftract.eval.tractometer import load_scoring, score
from difftract.io.dwi import load_subject
from difftract.io.tractogram import load_tractogram
from difftract.models.ddtracking.data import signal_sh
from difftract.models.ddtracking.getter import DDTrackingGetter, load_ddtracking
from difftract.phantom import PhantomConfig, save_phantom, simulate
from difftract.reconst.csd import CsdModel
from difftract.tracking.getters import make_getter
from difftract.tracking.seeding import random_seeds
from difftract.tracking.sh_field import SHField
from difftract.tracking.stopping import BinaryCriterion
from difftract.tracking.tracker import Tracker, TrackingParams
from foreign import ForeignConfig, build_foreign, save_foreign

KEYS = ("VS_ratio", "IC_ratio", "NC_ratio", "VB", "mean_OL", "mean_OR_vs", "mean_f1")
COLUMNS = ("seen", "unseen", "foreign")
VARIANTS = ("temporal", "spatial_temporal", "spatial_temporal_generative", "full")
SEEN = dict(preset="fibercup", seed=0, snr=18.0, bvals=(1000.0,), ndirs=48, nb0=2)
SCHEME = dict(snr=20.0, bvals=(1000.0,), ndirs=32, nb0=2)
REPRO = ("deterministic_repeats", "stochastic_same_seed_repeats", "stochastic_other_seed_differs")
README = "README, Learned tracking (DDTracking)"
DD = "ddtracking (S=1)"
RULE = "DESIGN, Evaluation of learned models"


def column_targets(col: str) -> list[Target]:
    hard = col != "seen"
    note = "" if hard else " (seen geometry: reported, not a test)"
    return [Target(f"vc_over_det_{col}", ">=", 1.0, f"{RULE}: learned >= classical, VC of DDTracking S=1 / VC of "
                   f"det{note}", hard=hard),
            Target(f"f1_over_det_{col}", ">=", 1.0, f"{RULE}: learned >= classical, F1 of DDTracking S=1 / F1 of "
                   f"det{note}", hard=hard),
            Target(f"vb_fraction_{col}", ">=", 1.0, f"{README}: every bundle found (VB / bundles){note}", hard=False)]


TARGETS = [
    *(Target(name, "==", True, f"{README}: deterministic runs repeat exactly; stochastic runs repeat for the same "
             "--seed and differ for another") for name in REPRO),
    *(t for col in COLUMNS for t in column_targets(col)),
    *(Target(f"ablation_{v}", "measured", None, f"{README}: the ablation table (a row per variant, VC reported; "
             "unseen column); needs --weights-dir") for v in VARIANTS),
    Target("ablation_ol_gain_regression", ">", 0.0, f"{README}: the local condition helps (OL spatial_temporal - "
           "OL temporal, unseen column)", hard=False),
    Target("ablation_ol_gain_generative", ">", 0.0, f"{README}: the local condition helps (OL full - "
           "OL spatial_temporal_generative, unseen column)", hard=False),
]


def phantoms(args) -> dict[str, list[tuple[str, Path]]]:
    """Write (once) the test phantoms of each column under ``--work``: {column: [(label, dir)]}."""
    def ours(config: PhantomConfig, label: str) -> tuple[str, Path]:
        d = args.work / label
        if not (d / "gt" / "scoring.json").exists():
            save_phantom(simulate(config), d, force=True)
        return label, d

    def foreign(layout: str, seed: int) -> tuple[str, Path]:
        label, config = f"foreign_{layout}_{seed}", ForeignConfig(layout=layout, seed=seed, **SCHEME)
        d = args.work / label
        if not (d / "gt" / "scoring.json").exists():
            save_foreign(build_foreign(config), config, d, force=True)
        return label, d

    return {"seen": [ours(PhantomConfig(**SEEN), "seen_fibercup_0")],
            "unseen": [ours(PhantomConfig(preset="random", seed=s, **SCHEME), f"unseen_random_{s}")
                       for s in args.unseen_seeds],
            "foreign": [foreign(layout, s) for layout in args.foreign_layouts for s in args.foreign_seeds]}


def run(tracker: Tracker, seeds, seed: int = 0) -> tuple[list[np.ndarray], float]:
    t0 = time.perf_counter()
    lines = [s.numpy() for chunk in tracker.track(seeds, seed=seed) for s in chunk.split()]
    return lines, time.perf_counter() - t0


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


class Subject:
    """One test phantom loaded for tracking: seeds, stopping, CSD field and SH features."""

    def __init__(self, directory: Path, per_voxel: int, max_seeds: int | None):
        self.dwi = load_subject(directory)
        self.config = load_scoring(directory)
        self.n_bundles = len(self.config.bundles)
        wm = np.asarray(nib.load(directory / "wm.nii.gz").dataobj) > 0
        seeds = random_seeds(wm, per_voxel, torch.Generator().manual_seed(0))
        if max_seeds is not None and max_seeds < len(seeds):   # a random subset, spread over the phantom
            keep = torch.randperm(len(seeds), generator=torch.Generator().manual_seed(1))[:max_seeds]
            seeds = seeds[keep.sort().values]
        self.wm, self.seeds = wm, seeds
        self.vox = tuple(float(v) for v in self.dwi.voxel_sizes)
        self.criterion = BinaryCriterion(wm)
        fit = CsdModel(self.dwi.gtab, lmax=8, legacy=False).fit(self.dwi.data, self.dwi.mask, progress=False)
        self.field = SHField(fit.coeffs, legacy=False)
        self.sh = signal_sh(self.dwi)
        self.truth = list(load_tractogram(directory / "tractogram.trk").streamlines)

    def classical(self, method: str, **kw) -> Tracker:
        return Tracker(make_getter(method, sh=self.field, max_angle=45), self.criterion, self.vox,
                       TrackingParams(step_mm=1.0, min_len_mm=20, max_len_mm=250), **kw)

    def learned(self, model, steps: int, stochastic: bool, **kw) -> Tracker:
        getter = DDTrackingGetter(model, self.sh, 45.0, steps, stochastic, self.vox)
        return Tracker(getter, self.criterion, self.vox,
                       TrackingParams(step_mm=min(self.vox), min_len_mm=20, max_len_mm=250), **kw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", type=Path, help="DDTracking weights (default: the shipped model)")
    ap.add_argument("--weights-dir", type=Path, help="directory with the ablation's {variant}.pt")
    ap.add_argument("--work", type=Path, help="where the test phantoms are written (default: a temporary dir)")
    ints = lambda s: tuple(int(x) for x in s.split(","))   # noqa: E731
    ap.add_argument("--unseen-seeds", type=ints, default=(9001,), help="random-preset test seeds (default: 9001)")
    ap.add_argument("--foreign-seeds", type=ints, default=(9101,), help="foreign phantom test seeds (default: 9101)")
    ap.add_argument("--foreign-layouts", type=lambda s: tuple(s.split(",")), default=("crossroads",),
                    help="foreign layouts: crossroads, random, fibercup (default: crossroads)")
    ap.add_argument("--seeds-per-voxel", type=int, default=1)
    ap.add_argument("--max-seeds", type=int, help="track a seeded random subset of N seeds per phantom")
    ap.add_argument("--stochastic", action="store_true", help="add the stochastic S=5 row to every phantom")
    ap.add_argument("--speed-seeds", type=int, default=10_000, help="seeds of the speed run (0: skip it)")
    ap.add_argument("--threads", type=int, default=2)
    args, check = parse_args(ap, "bench_ddtracking", TARGETS)
    torch.set_num_threads(args.threads)
    args.work = args.work or Path(tempfile.mkdtemp())
    model, meta = load_ddtracking(args.weights)          # the shipped model by default
    tables: dict[str, dict[str, dict]] = {}
    seen = None   # the first seen-geometry subject: reproducibility and speed run on it
    ablation = {} if args.weights_dir is None else {   # loaded once, used on every unseen phantom
        v: load_ddtracking(args.weights_dir / f"{v}.pt")[0] for v in VARIANTS if (args.weights_dir / f"{v}.pt").exists()}
    header = (f"{'rule':34} {'n':>6} {'VC':>6} {'IC':>6} {'NC':>6} {'VB':>3} {'OL':>6} {'OR':>6} {'F1':>6} "
              f"{'seconds':>8}")
    for col, items in phantoms(args).items():
        for label, directory in items:
            s = Subject(directory, args.seeds_per_voxel, args.max_seeds)
            if col == "seen" and seen is None:
                seen = s
            rows = tables.setdefault(col, {})[label] = {}

            def add(name, lines, seconds):
                result = score(lines, s.config).scores
                r = rows[name] = {k: result[k] for k in KEYS} | {"n": len(lines), "seconds": round(seconds, 1),
                                                               "bundles": s.n_bundles}
                print(f"{name:34} {r['n']:6} {r['VS_ratio']:6.3f} {r['IC_ratio']:6.3f} {r['NC_ratio']:6.3f} "
                      f"{r['VB']:3} {r['mean_OL']:6.3f} {r['mean_OR_vs']:6.3f} {r['mean_f1']:6.3f} {seconds:8.1f}",
                      flush=True)

            print(f"\n[{col}] {label}: {len(s.seeds)} seeds, {s.n_bundles} bundles\n{header}")
            add("ground truth", s.truth, 0.0)
            for method in ("det", "prob"):
                add(method, *run(s.classical(method), s.seeds))
            add(DD, *run(s.learned(model, 1, False, chunk_size=10_000), s.seeds))
            if args.stochastic:
                add("ddtracking (stochastic S=5)", *run(s.learned(model, 5, True, chunk_size=10_000), s.seeds))
            if col == "unseen":
                for variant, variant_model in ablation.items():
                    add(f"ablation {variant} (S=1)", *run(s.learned(variant_model, 1, False, chunk_size=10_000), s.seeds))
    columns = summarise(tables)
    print_columns(columns)
    measure_targets(check, columns, args)
    repro = reproducibility(check, seen, model)
    speed = speed_run(seen, model, args.speed_seeds)
    check.finish({"benchmark": "bench_ddtracking", "weights": meta["path"], "weights_sha256": meta["sha256"],
                  "max_seeds": args.max_seeds, "tables": _plain(tables), "columns": columns,
                  "reproducibility": repro, "speed": speed, "speed_seeds": args.speed_seeds,
                  "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None})


def summarise(tables: dict[str, dict[str, dict]]) -> dict[str, dict[str, dict]]:
    """Per column and rule, the mean over the column's phantoms (VB as a fraction of the bundles)."""
    out: dict[str, dict[str, dict]] = {}
    for col, by_phantom in tables.items():
        rules = [r for r in next(iter(by_phantom.values())) if all(r in rows for rows in by_phantom.values())]
        for rule in rules:
            rs = [rows[rule] for rows in by_phantom.values()]
            out.setdefault(col, {})[rule] = {k: float(np.mean([r[k] for r in rs])) for k in KEYS if k != "VB"} | {
                "VB_fraction": float(np.mean([r["VB"] / r["bundles"] for r in rs])), "phantoms": len(rs)}
    return out


def print_columns(columns: dict[str, dict[str, dict]]) -> None:
    keys = (("VS_ratio", "VC"), ("IC_ratio", "IC"), ("NC_ratio", "NC"), ("VB_fraction", "VB"), ("mean_OL", "OL"),
            ("mean_OR_vs", "OR"), ("mean_f1", "F1"))
    print("\nThree columns (means over each column's phantoms; VB as a fraction of the bundles):")
    print(f"{'rule':28} " + " | ".join(f"{c:^41}" for c in COLUMNS))
    print(f"{'':28} " + " | ".join(" ".join(f"{h:>5}" for _, h in keys) for _ in COLUMNS))
    rules = [r for r in columns["seen"] if all(r in columns[c] for c in COLUMNS)]
    for rule in rules:
        cells = [" ".join(f"{columns[c][rule][k]:5.3f}" for k, _ in keys) for c in COLUMNS]
        print(f"{rule:28} " + " | ".join(cells))


def measure_targets(check, columns: dict[str, dict[str, dict]], args) -> None:
    for col in COLUMNS:
        dd, det = columns[col][DD], columns[col]["det"]
        check.measure(f"vc_over_det_{col}", dd["VS_ratio"] / max(det["VS_ratio"], 1e-12))
        check.measure(f"f1_over_det_{col}", dd["mean_f1"] / max(det["mean_f1"], 1e-12))
        check.measure(f"vb_fraction_{col}", dd["VB_fraction"])
    unseen = columns["unseen"]
    if args.weights_dir is None:
        for target in [f"ablation_{v}" for v in VARIANTS] + ["ablation_ol_gain_regression",
                                                             "ablation_ol_gain_generative"]:
            check.skip(target, "no --weights-dir: the ablation is not run")
        return
    for v in VARIANTS:
        row = unseen.get(f"ablation {v} (S=1)")
        if row is None:
            check.unmeasured(f"ablation_{v}", f"no weights at {args.weights_dir / (v + '.pt')}")
        else:
            check.measure(f"ablation_{v}", row["VS_ratio"])
    for target, better, worse in (("ablation_ol_gain_regression", "spatial_temporal", "temporal"),
                                  ("ablation_ol_gain_generative", "full", "spatial_temporal_generative")):
        a, b = unseen.get(f"ablation {better} (S=1)"), unseen.get(f"ablation {worse} (S=1)")
        if a is None or b is None:
            check.unmeasured(target, f"needs the ablation rows {better} and {worse}")
        else:
            check.measure(target, a["mean_OL"] - b["mean_OL"])


def reproducibility(check, s: Subject, model) -> dict[str, bool]:
    """On the first 1,000 seeds of the seen phantom."""
    few = s.seeds[:1000]
    det, sto = s.learned(model, 1, False), s.learned(model, 5, True)
    repro = {"deterministic_repeats": same(run(det, few)[0], run(det, few)[0]),
             "stochastic_same_seed_repeats": same(run(sto, few, 3)[0], run(sto, few, 3)[0]),
             "stochastic_other_seed_differs": not same(run(sto, few, 3)[0], run(sto, few, 4)[0])}
    print("reproducibility:", repro)
    for name in REPRO:
        check.measure(name, repro[name])
    return repro


def speed_run(s: Subject, model, n_seeds: int) -> dict[str, dict]:
    """Streamlines and seeds per second of det and DDTracking (S=1, stochastic S=5) on ``n_seeds`` seeds."""
    if n_seeds <= 0:
        print("speed: skipped (--speed-seeds 0)")
        return {}
    seeds = random_seeds(s.wm, -(-n_seeds // int(s.wm.sum())), torch.Generator().manual_seed(1))[:n_seeds]
    speed = {}
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        chunk = 10_000 if device == "cpu" else 100_000
        lines, seconds = run(s.classical("det", device=device, chunk_size=chunk), seeds)
        speed[f"det {device}"] = {"streamlines_per_s": len(lines) / seconds, "seeds_per_s": len(seeds) / seconds}
        for steps, stochastic in ((1, False), (5, True)):
            lines, seconds = run(s.learned(model, steps, stochastic, device=device, chunk_size=chunk), seeds)
            speed[f"ddtracking S={steps} {device}"] = {"streamlines_per_s": len(lines) / seconds,
                                                       "seeds_per_s": len(seeds) / seconds, "seconds": seconds}
    for name, r in speed.items():
        r["ratio_vs_det"] = r["seeds_per_s"] / speed[f"det {name.split()[-1]}"]["seeds_per_s"]
        print(f"speed {name:24} {r['streamlines_per_s']:9.1f} streamlines/s {r['seeds_per_s']:9.1f} seeds/s "
              f"({r['ratio_vs_det']:.3f}x det)")
    return speed


def _plain(d):
    if isinstance(d, dict):
        return {k: _plain(v) for k, v in d.items()}
    return float(d) if isinstance(d, (float, np.floating)) else d


if __name__ == "__main__":
    main()
