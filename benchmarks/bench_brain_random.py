"""Brain-random benchmark: how varied, brain-like and fast ``--preset brain-random`` subjects are.

Run: ``.venv/bin/python benchmarks/bench_brain_random.py [--seeds 10] [--figures DIR]`` (a few
minutes on 2 cores). Prints readable figures, then one JSON object as the last line.

Figures, per seed (2 mm, the default bundle count; 6 directions and no noise, as only the geometry
is measured here):
- bundles, and how many were placed through (cross) or beside (kiss) an earlier bundle;
- crossing share: of the voxels in any bundle mask, those whose two largest populations both
  have a volume fraction >= 0.1 and peaks at >= 45 degrees;
- white-matter coverage: template voxels of WM fraction >= 0.5 holding fibre (fraction >= 0.1);
- mean ground-truth streamline length; share of streamline end points in grey matter (template
  GM fraction >= 0.3 there; centrelines end in GM voxels by construction);
- validity: simulate() succeeded (every fibre inside the brain) and every seed's layout differs
  from every other's (that no bundle folds is the placer's own check, tested in
  tests/phantom/test_brain_random.py, not measured here).
And the time and peak memory (the process's VmHWM) of ``difftract simulate OUT --preset
brain-random --seed 0`` at its defaults (SNR 20, 32 directions) at 2 and 2.5 mm.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from _cli import run_cli
from _check import Target, parse_args
from difftract.errors import ConfigError
from difftract.phantom import PhantomConfig, simulate
from difftract.phantom.brain_random import anatomy
from difftract.phantom.registry import get_layout

BRIEF = "issue 18 part 3 brief"
TARGETS = [
    Target("all_subjects_valid", "==", True,
           "brief: bundles inside the brain, never fold; every seed a new geometry"),
    Target("bundles_per_subject_min", ">=", 12, "brief: default 12-30 bundles"),
    Target("bundles_per_subject_max", "<=", 30, "brief: default 12-30 bundles"),
    Target("crossing_share_mean", ">=", 0.025,
           "crossings present: measured 0.026-0.059 per seed (mean 0.035) when set"),
    Target("ends_in_grey_matter", ">=", 0.8, "brief: both ends in cortical/deep GM (end points, GM >= 0.3)"),
    Target("mean_length_mm", "range", (50.0, 120.0), "brief: lengths 30-150 mm"),
    Target("cli_seconds_2mm", "<", 120.0, "brief: simulate a 2 mm subject in < 1-2 min"),
    Target("cli_peak_gb_2mm", "<", 4.0, "brief: < 4 GB"),
]


def subject_figures(seed: int, figures: Path | None, n_bundles: int | None = None) -> dict:
    config = PhantomConfig(preset="brain-random", seed=seed, snr=None, ndirs=6, nb0=1, n_bundles=n_bundles)
    start = time.perf_counter()
    kwargs = {} if n_bundles is None else {"n_bundles": n_bundles}
    # the layout `simulate --seed` draws: its geometry stream is the first child of the seed
    layout = get_layout("brain-random", np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0]), **kwargs)
    p = simulate(config, layout=layout)
    seconds = time.perf_counter() - start
    template = anatomy(p.voxel_size).template
    f, peaks = p.fractions, p.peaks
    cos = np.abs(np.einsum("...k,...k->...", peaks[..., 0, :], peaks[..., 1, :]))
    crossing = (f[..., 1] >= 0.1) & (cos <= np.cos(np.radians(45.0)))
    wm = template.wm >= 0.5
    ends = np.array([s[i] for s in p.streamlines for i in (0, -1)]) * p.voxel_size
    kinds = [b.name.rsplit("_", 1)[1] for b in p.bundles]
    if figures is not None:
        from difftract.viz.glass_brain import glass_brain

        glass_brain(p, figures / f"brain_random_seed{seed}.png", force=True)
    return {"seed": seed, "bundles": len(p.bundles), "cross": kinds.count("cross"), "kiss": kinds.count("kiss"),
            "crossing_share": float(crossing[p.wm].mean()),
            "wm_coverage": float(((f.sum(axis=-1) >= 0.1) & wm).sum() / wm.sum()),
            "mean_length_mm": p.summary()["mean_length_mm"],
            "ends_in_grey_matter": float(np.mean(template.sample("gm", ends) >= 0.3)),
            "first_point": layout.bundles[0].points[0].round(3).tolist(), "seconds": round(seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10, help="subjects to measure (seeds 0..N-1; default 10)")
    ap.add_argument("--n-bundles", type=int, default=None,
                    help="bundles per subject (default: the preset's, 12-30 drawn per seed)")
    ap.add_argument("--figures", type=Path, default=None, help="write glass-brain pictures of the first 2 seeds here")
    args, check = parse_args(ap, "bench_brain_random", TARGETS)
    if args.figures is not None:
        args.figures.mkdir(parents=True, exist_ok=True)
    subjects, failed = [], []
    for seed in range(args.seeds):
        try:
            subjects.append(subject_figures(seed, args.figures if seed < 2 else None, args.n_bundles))
        except ConfigError as e:  # e.g. a bundle leaving the brain: an invalid subject, not a crash
            failed.append({"seed": seed, "error": str(e)})
            print(f"seed {seed}: FAILED: {e}", flush=True)
            continue
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in subjects[-1].items()}, flush=True)
    if not subjects:
        raise SystemExit("no subject could be simulated: " + "; ".join(f["error"] for f in failed))
    cli = {}
    with tempfile.TemporaryDirectory() as tmp:
        for vs in (2.0, 2.5):
            with check.measuring(*(["cli_seconds_2mm", "cli_peak_gb_2mm"] if vs == 2.0 else []), what="CLI run"):
                seconds, gb = run_cli("simulate", Path(tmp) / f"vs{vs}", "--preset", "brain-random", "--seed", "0",
                                      "--voxel-size", vs, "--force")
                cli[f"{vs:g}mm"] = {"seconds": round(seconds, 1), "peak_gb": round(gb, 2)}
                print(f"difftract simulate --preset brain-random --voxel-size {vs:g}: {seconds:.1f} s, {gb:.2f} GB",
                      flush=True)
    column = {k: [s[k] for s in subjects] for k in subjects[0]}
    distinct = len({tuple(p) for p in column["first_point"]}) == len(subjects)
    results = {
        "seeds": args.seeds, "subjects": subjects, "failed": failed, "cli": cli,
        "bundles_mean": float(np.mean(column["bundles"])),
        "crossing_share_mean": float(np.mean(column["crossing_share"])),
        "wm_coverage_mean": float(np.mean(column["wm_coverage"])),
        "mean_length_mm": float(np.mean(column["mean_length_mm"])),
        "ends_in_grey_matter": float(np.mean(column["ends_in_grey_matter"])),
        "layouts_distinct": distinct,
    }
    for key in ("bundles_mean", "crossing_share_mean", "wm_coverage_mean", "mean_length_mm", "ends_in_grey_matter",
                "layouts_distinct"):
        print(f"{key}: {results[key]}")
    check.measure("all_subjects_valid", not failed and distinct)
    check.measure("bundles_per_subject_min", min(column["bundles"]))
    check.measure("bundles_per_subject_max", max(column["bundles"]))
    check.measure("crossing_share_mean", results["crossing_share_mean"])
    check.measure("ends_in_grey_matter", results["ends_in_grey_matter"])
    check.measure("mean_length_mm", results["mean_length_mm"])
    if "2mm" in cli:
        check.measure("cli_seconds_2mm", cli["2mm"]["seconds"])
        check.measure("cli_peak_gb_2mm", cli["2mm"]["peak_gb"])
    check.finish(results)


if __name__ == "__main__":
    import warnings

    warnings.simplefilter("ignore")
    main()
