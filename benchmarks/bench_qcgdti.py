"""QCG-DTI against six-direction WLS on simulated subjects never seen in training.

Run: ``.venv/bin/python benchmarks/bench_qcgdti.py --work qcg_work`` (trains the four variants
when their weights are not in WORK/weights: about 10 minutes each on 2 CPU cores; then about
5 minutes of evaluation). ``--quick`` trains tiny models for a smoke run.

1. Training subjects (written once to WORK/train, the commands to WORK/commands.sh): random
   phantoms (seeds 1001-1006, SNR 10-40) and fibercup-like phantoms (seeds 1101-1102),
   validation: a random phantom (seed 1201). Scheme: 2 b0, 90 directions at b=1000 and 60 at
   b=2000 and b=3000. These are also the shipped weights' training data.
2. Each variant trained by ``difftract train qcgdti`` with the same budget (--epochs); then
   ``full`` continued with --resume to --long-epochs: the shipped weights ("full, long").
3. Test subjects: random phantoms (seeds 2001, 2002: geometry never seen) and the fibercup
   test phantom (seed 0: its geometry is fixed, so training saw it through seeds 1101-1102, but
   not this noise or fibre sampling), all SNR 20 with the same multi-shell scheme; one table
   per group. Errors are against the ground truth: WLS on
   every volume of a noise-free twin (same seed, no noise). Rows: the many-direction
   reference (WLS on all volumes of the noisy scan), WLS on the six DWIs, the same without
   noise (the bias of a six-DWI fit of a non-Gaussian signal: a floor), and each variant.
   Fixed: the six volumes nearest DSM6 at b=1000. Flexible: two sets per shell and subject
   nearest a random rotation of DSM6 (b = 1000, 2000, 3000); "flexible (all shells)" pools them.
4. Downstream: deterministic tracking (fODF maximum, the ``det`` rule) of each tensor field's
   ODF on the fibercup test phantom, WM-mask stop, 2 seeds per WM voxel; per-bundle Dice of
   binary density maps (> 5 streamlines) against tracking on the reference tensors, and
   Tractometer scores.

Prints tables, then one JSON object as the last line.

Targets (``--check`` exits 1 when a hard one is missed or could not be measured, e.g. no
``full`` variant among ``--variants``; ``--help`` lists them), the ones this benchmark prints,
for the shipped model ("full, long", else "full"), on flexible six-DWI sets: FA error <= 0.4x
and angle <= 0.7x those of WLS on the same six DWIs, and the tensor error on flexible sets at
b=1000 <= 1.1x that of the fixed set. Hard on the random test phantoms (the README's claim:
0.38x, 0.49x; unseen geometry), soft on fibercup (geometry seen in training). ``--quick``
evaluates fibercup only, so the random targets are skipped (said in the table).
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from _check import Target, parse_args
from difftract.eval.overlap import binary_map, density_map, dice
from difftract.eval.tensor_errors import tensor_errors
from difftract.eval.tractometer import load_scoring, score
from difftract.models.qcgdti.data import reference_tensor
from difftract.models.qcgdti.predict import QCGTensorModel
from difftract.models.qcgdti.schemes import fixed_six, flexible_six
from difftract.phantom import PhantomConfig, save_phantom, simulate
from difftract.reconst import tensor as T
from difftract.reconst.sh import sh_basis
from difftract.tracking.getters import make_getter
from difftract.tracking.seeding import random_seeds
from difftract.tracking.sh_field import SHField
from difftract.tracking.stopping import BinaryCriterion
from difftract.tracking.tracker import Tracker, TrackingParams

SCHEME = {"bvals": (1000.0, 2000.0, 3000.0), "ndirs": (90, 60, 60), "nb0": 2}
TRAIN = ([("random", s, snr) for s, snr in zip(range(1001, 1007), (10, 15, 20, 30, 40, 20))]
         + [("fibercup", 1101, 15), ("fibercup", 1102, 25)] + [("random", 1201, 20)])   # the last validates
TEST = [("random", 2001), ("random", 2002), ("fibercup", 0)]
VARIANTS = ("full", "no_qcf", "concat", "resnet")
GROUPS = {"random": "random test phantoms (geometry unseen)",
          "fibercup": "fibercup seed 0 (geometry seen in training, noise and fibres not)"}
METRICS = ("tensor_error", "fa_mae", "md_mae", "ad_mae", "rd_mae", "angle_mean")
DIFFTRACT = [sys.executable, "-m", "difftract"]
SUMMARY = {"fa_ratio_flexible": ("<=", 0.4, "FA error of QCG / WLS-6 on flexible sets (README 0.38x)"),
           "angle_ratio_flexible": ("<=", 0.7, "angle of QCG / WLS-6 on flexible sets (README 0.49x)"),
           "tensor_flexible_over_fixed_b1000": ("<=", 1.1, "QCG tensor error, flexible / fixed set at b=1000 "
                                                "(README: as good, FA 1.00x, angle 1.06x)")}
GROUP_KEYS = {"random": GROUPS["random"], "fibercup": GROUPS["fibercup"]}
TARGETS = [Target(f"{key}_{g}", op, thr, f"this benchmark's printed target; {text}"
                  + ("" if g == "random" else "; the README claims it for unseen geometry only"),
                  hard=(g == "random"))
           for g in GROUP_KEYS for key, (op, thr, text) in SUMMARY.items()]


def phantom_config(preset: str, seed: int, snr: float | None) -> PhantomConfig:
    return PhantomConfig(preset=preset, seed=seed, snr=snr, bvals=SCHEME["bvals"], ndirs=SCHEME["ndirs"],
                         nb0=SCHEME["nb0"])


def run(cmd: list[str], log: list[str]) -> None:
    log.append(shlex.join(["difftract", *cmd[3:]] if cmd[:3] == DIFFTRACT else cmd))
    print("+", log[-1], flush=True)
    subprocess.run(cmd, check=True)


def training_data(work: Path, log: list[str]) -> list[Path]:
    dirs = []
    for preset, seed, snr in TRAIN:
        d = work / "train" / f"{preset}_{seed}"
        cmd = [*DIFFTRACT, "-q", "simulate", str(d), "--preset", preset, "--seed", str(seed), "--snr", str(snr),
               "--bvals", ",".join(f"{b:g}" for b in SCHEME["bvals"]), "--ndirs", ",".join(map(str, SCHEME["ndirs"])),
               "--nb0", str(SCHEME["nb0"])]
        if d.exists():
            log.append(shlex.join(["difftract", *cmd[3:]]))
        else:
            run(cmd, log)
        dirs.append(d)
    return dirs


def train_variants(work: Path, subjects: list[Path], args, log: list[str]) -> dict[str, Path]:
    weights = {}
    for variant in args.variants:
        out = work / "weights" / f"{variant}.pt"
        cmd = [*DIFFTRACT, "train", "qcgdti", *map(str, subjects), "--out", str(out), "--variant", variant,
               "--epochs", str(args.epochs), "--samples-per-epoch", str(args.samples_per_epoch),
               "--widths", args.widths, "--val-samples", "16", "--seed", "0", "--device", "cpu"]
        if out.exists():
            log.append(shlex.join(["difftract", *cmd[3:]]))
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            run(cmd, log)
        weights[variant] = out
    if args.long_epochs > args.epochs and "full" in weights:
        # the shipped model: the same `full` run continued with --resume to more epochs
        long = work / "weights" / "full_long.pt"
        cmd = [*DIFFTRACT, "train", "qcgdti", *map(str, subjects), "--out", str(long), "--variant", "full",
               "--epochs", str(args.long_epochs), "--samples-per-epoch", str(args.samples_per_epoch),
               "--widths", args.widths, "--val-samples", "16", "--seed", "0", "--device", "cpu", "--resume"]
        if long.exists():
            log.append(shlex.join(["difftract", *cmd[3:]]))
        else:
            for suffix in (".ckpt.pt", ".metrics.jsonl"):
                log.append(f"cp {work / 'weights' / ('full' + suffix)} {work / 'weights' / ('full_long' + suffix)}")
                shutil.copyfile(work / "weights" / f"full{suffix}", work / "weights" / f"full_long{suffix}")
            run(cmd, log)
        weights["full, long"] = long
    return weights


def tensor_sh(lt: np.ndarray, lmax: int = 8) -> np.ndarray:
    """SH coefficients (legacy descoteaux07) of each tensor's diffusion ODF, ODF(u) ~ (u' D^-1 u)^(-3/2)."""
    from dipy.data import default_sphere

    u = default_sphere.vertices
    D = T.from_lower_triangular(torch.from_numpy(lt.astype(np.float64))).numpy()
    D = D + np.eye(3) * 1e-6                                  # background voxels stay invertible
    quad = np.einsum("vi,...ij,vj->...v", u, np.linalg.inv(D), u)
    odf = np.clip(quad, 1e-12, None) ** -1.5
    B, _ = sh_basis(u, lmax, legacy=True)
    return (odf @ np.linalg.pinv(B).T).astype(np.float32)


def track(lt: np.ndarray, wm: np.ndarray, seeds: torch.Tensor) -> list[np.ndarray]:
    getter = make_getter("det", sh=SHField(tensor_sh(lt), legacy=True), max_angle=45)
    tracker = Tracker(getter, BinaryCriterion(wm), (2.0, 2.0, 2.0), TrackingParams(step_mm=1.0), chunk_size=20_000)
    return [s.numpy() for c in tracker.track(seeds, seed=0) for s in c.split()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("qcg_work"))
    ap.add_argument("--variants", type=lambda s: tuple(s.split(",")), default=VARIANTS)
    ap.add_argument("--epochs", type=int, default=14, help="epochs of every variant (the same budget)")
    ap.add_argument("--long-epochs", type=int, default=24,
                    help="then `full` continued to this many epochs: the shipped weights")
    ap.add_argument("--samples-per-epoch", type=int, default=50)
    ap.add_argument("--widths", default="8,16,32")
    ap.add_argument("--flexible-sets", type=int, default=2, help="flexible sets per shell and subject")
    ap.add_argument("--quick", action="store_true", help="tiny models, one test subject: a smoke run")
    args, check = parse_args(ap, "bench_qcgdti", TARGETS)
    if args.quick:
        args.epochs, args.samples_per_epoch, args.widths, args.flexible_sets, args.long_epochs = 1, 4, "4,8", 1, 0
    torch.set_num_threads(2)
    log: list[str] = []
    weights = train_variants(args.work, training_data(args.work, log), args, log)
    (args.work / "commands.sh").write_text("\n".join(log) + "\n")
    models = {v: QCGTensorModel.from_weights(w, "cpu") for v, w in weights.items()}

    rows: dict[str, dict[str, list[dict]]] = {}
    fields = {}
    tests = TEST[-1:] if args.quick else TEST
    t0 = time.perf_counter()
    for preset, seed in tests:
        noisy = simulate(phantom_config(preset, seed, 20.0))
        clean = simulate(phantom_config(preset, seed, None))
        truth = reference_tensor(clean.data, clean.bvals, clean.bvecs, clean.mask)
        mask = noisy.mask
        rng = np.random.default_rng(seed)
        sets = [("fixed b1000", fixed_six(noisy.bvals, noisy.bvecs, 1000.0))]
        sets += [(f"flexible b{b:.0f}", flexible_six(noisy.bvals, noisy.bvecs, rng, shell=b))
                 for _ in range(args.flexible_sets) for b in (1000.0, 2000.0, 3000.0)]
        reference = reference_tensor(noisy.data, noisy.bvals, noisy.bvecs, mask)
        for scheme, six in sets:
            idx = [0, *six.indices]
            estimates = {"reference (all volumes)": reference,
                         "WLS, six DWIs": reference_tensor(noisy.data[..., idx], noisy.bvals[idx], noisy.bvecs[idx], mask),
                         "WLS, six DWIs, no noise": reference_tensor(clean.data[..., idx], clean.bvals[idx],
                                                                    clean.bvecs[idx], mask)}
            for v, model in models.items():
                estimates[f"QCG-DTI {v}"] = model.fit(noisy.data, noisy.bvals, noisy.bvecs, mask, six).lower_triangular()
            group = rows.setdefault(GROUPS[preset], {})
            for name, est in estimates.items():
                errors = tensor_errors(est, truth, mask).as_dict()
                group.setdefault(name, {}).setdefault(scheme, []).append(errors)
                if scheme.startswith("flexible"):
                    group[name].setdefault("flexible (all shells)", []).append(errors)
            if preset == "fibercup" and scheme == "flexible b1000" and "fibercup" not in fields:
                fields["fibercup"] = (noisy, estimates)
        print(f"evaluated {preset} seed {seed} ({time.perf_counter() - t0:.0f} s)", flush=True)

    tables = {g: {name: {scheme: {m: float(np.mean([r[m] for r in runs])) for m in METRICS}
                         for scheme, runs in by_scheme.items()} for name, by_scheme in group.items()}
              for g, group in rows.items()}
    summary = {}
    for g, table in tables.items():
        print(f"\nTensor errors against the noise-free ground truth, {g} (diffusivities in 1e-3 mm^2/s, "
              "angle in degrees over voxels with FA > 0.2)")
        print(f"{'method':26} {'scheme':21} {'tensor':>7} {'FA':>7} {'MD':>7} {'AD':>7} {'RD':>7} {'angle':>7}")
        for name, by_scheme in table.items():
            for scheme in sorted(by_scheme):
                m = by_scheme[scheme]
                print(f"{name:26} {scheme:21} {m['tensor_error'] * 1e3:7.4f} {m['fa_mae']:7.4f} "
                      f"{m['md_mae'] * 1e3:7.4f} {m['ad_mae'] * 1e3:7.4f} {m['rd_mae'] * 1e3:7.4f} {m['angle_mean']:7.2f}")
        best = "QCG-DTI full, long" if "QCG-DTI full, long" in table else "QCG-DTI full"
        if best not in table:
            continue
        print(f"{best}:")
        full, wls = table[best], table["WLS, six DWIs"]
        flex, fixed, same = full["flexible (all shells)"], full["fixed b1000"], full["flexible b1000"]
        wflex = wls["flexible (all shells)"]
        summary[g] = {"model": best, "fa_ratio_flexible": flex["fa_mae"] / wflex["fa_mae"],
                      "angle_ratio_flexible": flex["angle_mean"] / wflex["angle_mean"],
                      "fa_flexible_over_fixed_b1000": same["fa_mae"] / fixed["fa_mae"],
                      "angle_flexible_over_fixed_b1000": same["angle_mean"] / fixed["angle_mean"],
                      "tensor_flexible_over_fixed_b1000": same["tensor_error"] / fixed["tensor_error"]}
        print("QCG / WLS-6, flexible sets on all shells: FA {fa_ratio_flexible:.3f} (target <= 0.4), angle "
              "{angle_ratio_flexible:.3f} (target <= 0.7)\nQCG, flexible / fixed on the same shell (b=1000): FA "
              "{fa_flexible_over_fixed_b1000:.3f}, angle {angle_flexible_over_fixed_b1000:.3f}, tensor "
              "{tensor_flexible_over_fixed_b1000:.3f} (target <= 1.1)".format(**summary[g]))

    evaluated = {preset for preset, _ in tests}
    for g, title in GROUP_KEYS.items():
        for key in SUMMARY:
            name = f"{key}_{g}"
            if g not in evaluated:
                check.skip(name, "--quick evaluates the fibercup test phantom only")
            elif title not in summary:
                check.unmeasured(name, f"no QCG-DTI full model among --variants {','.join(args.variants)}")
            else:
                check.measure(name, summary[title][key])
    downstream = downstream_tracking(*fields["fibercup"], args.work) if "fibercup" in fields else {}
    check.finish({"benchmark": "bench_qcgdti", "tables": tables, "summary": summary, "downstream": downstream,
                  "commands": log})


def downstream_tracking(phantom, estimates: dict[str, np.ndarray], work: Path) -> dict:
    """det tracking on each tensor field of the fibercup test phantom: Dice per bundle and Tractometer."""
    phantom_dir = work / "test_fibercup"
    if not phantom_dir.exists():
        save_phantom(phantom, phantom_dir)
    config = load_scoring(phantom_dir)
    seeds = random_seeds(phantom.wm, 2, torch.Generator().manual_seed(0))
    results, maps = {}, {}
    for name, lt in estimates.items():
        streamlines = track(lt, phantom.wm, seeds)
        scored = score(streamlines, config)
        maps[name] = {b: binary_map(density_map([streamlines[i] for i in ids], phantom.shape), 6)
                      for b, ids in scored.segmentation.vs.items()}
        results[name] = {k: scored.scores[k] for k in ("VS_ratio", "IC_ratio", "NC_ratio", "VB", "mean_OL",
                                                        "mean_OR_vs", "mean_f1")} | {"n": len(streamlines)}
    ref = maps["reference (all volumes)"]
    print(f"\nDownstream det tracking on the fibercup test phantom ({len(seeds)} seeds; geometry seen in training), "
          "flexible six-DWI set on b=1000; Dice of per-bundle maps (voxels with > 5 streamlines) against the "
          "reference tensors' tracking")
    print(f"{'field':26} {'n':>6} {'VC':>6} {'IC':>6} {'NC':>6} {'VB':>3} {'OL':>6} {'OR':>6} {'F1':>6} {'Dice':>6}")
    for name, r in results.items():
        dices = [dice(maps[name][b], ref[b]) for b in ref]
        r["dice_per_bundle"] = {b: float(d) for b, d in zip(ref, dices)}
        r["mean_dice"] = float(np.nanmean(dices))
        print(f"{name:26} {r['n']:6} {r['VS_ratio']:6.3f} {r['IC_ratio']:6.3f} {r['NC_ratio']:6.3f} {r['VB']:3} "
              f"{r['mean_OL']:6.3f} {r['mean_OR_vs']:6.3f} {r['mean_f1']:6.3f} {r['mean_dice']:6.3f}")
    return results


if __name__ == "__main__":
    main()
