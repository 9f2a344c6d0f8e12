"""Phantom benchmark: simulation time, determinism and realism measured with DIPY.

Run: ``.venv/bin/python benchmarks/bench_phantom.py`` (about a minute on 2 cores).
Prints readable figures, then one JSON object as the last line.

Figures:
- time of ``difftract simulate OUT --preset fibercup --seed 0`` (simulate + write), best of 2;
- same seed -> identical arrays; another seed of ``random`` -> another geometry;
- DIPY WLS DTI on the phantom: FA in single-fibre voxels (fraction >= 0.99, one population)
  and in crossing voxels (two populations >= 0.3), MD in white-matter voxels;
- DIPY CSD (auto response, lmax 8, default sphere, relative threshold 0.25, separation 25
  degrees): in crossing voxels, the share with >= 2 peaks and the share whose two true
  directions each have a peak within 10 degrees; at the defaults (SNR 20, 32 directions)
  and with 64 directions and noise-free for context;
- every ground-truth streamline starts in its head ROI, ends in its tail ROI, and only
  traverses voxels of its bundle mask.

Targets (``--check`` exits 1 when a hard one is missed or could not be measured; ``--help``
lists them): determinism and the ground truth's consistency as stated above; realism, the
README's claims ("single-fibre FA ~0.76 at b=1000, lower in crossings, MD ~0.8e-3") with the
acceptance bounds of ``tests/phantom/test_simulate.py`` (median single-fibre FA in 0.6-0.85
and > 90% of those voxels in it, crossing FA more than 0.2 below, median WM MD in
0.6-0.9e-3 and > 90% in it); "CSD resolves the crossing": both fibres within 10 degrees in
> 90% of fibercup's crossing voxels, noise-free (the test's bound, there on the ``crossing``
preset; 100% measured here).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from dipy.core.gradients import gradient_table
from dipy.data import default_sphere
from dipy.direction import peaks_from_model
from dipy.reconst.csdeconv import ConstrainedSphericalDeconvModel, auto_response_ssst
from dipy.reconst.dti import TensorModel

from _check import Target, parse_args
from difftract.eval.traversal import endpoint_voxels, traversed_voxels
from difftract.phantom import PhantomConfig, simulate


SIM = "tests/phantom/test_simulate.py acceptance bound"
TARGETS = [
    Target("same_seed_identical", "==", True, "docstring: same seed -> identical arrays (DESIGN: Randomness)"),
    Target("random_seeds_differ", "==", True, "docstring: another seed of random -> another geometry"),
    Target("gt_head_to_tail", ">=", 1.0, "docstring: every ground-truth streamline starts in its head ROI and ends "
           "in its tail ROI"),
    Target("gt_inside_mask", ">=", 1.0, "docstring: every ground-truth streamline only traverses its bundle mask"),
    Target("fa_single_median", "range", (0.6, 0.85), f"README: single-fibre FA ~0.76; {SIM}"),
    Target("fa_single_in_range", ">", 0.9, f"{SIM} (share of single-fibre voxels with FA in 0.6-0.85)"),
    Target("fa_single_minus_crossing", ">", 0.2, f"README: FA lower in crossings; {SIM}"),
    Target("md_wm_median", "range", (0.6e-3, 0.9e-3), f"README: MD ~0.8e-3 mm^2/s; {SIM}"),
    Target("md_wm_in_range", ">", 0.9, f"{SIM} (share of WM voxels with MD in 0.6-0.9e-3)"),
    Target("csd_noisefree_both_within_10deg", ">", 0.9, "README: CSD resolves the crossing; the bound of "
           "tests/phantom/test_simulate.py::test_csd_resolves_the_crossing (there on the crossing preset; "
           "1.0 here)"),
]


def time_cli(out: Path) -> float:
    cmd = [sys.executable, "-m", "difftract", "-q", "simulate", str(out), "--preset", "fibercup", "--seed", "0",
           "--force"]
    best = np.inf
    for _ in range(2):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        best = min(best, time.perf_counter() - start)
    return best


def dti_figures(p) -> dict:
    fit = TensorModel(gradient_table(p.bvals, bvecs=p.bvecs), fit_method="WLS").fit(p.data, mask=p.wm)
    f = p.fractions
    single = (f[..., 0] >= 0.99) & (f[..., 1] == 0)
    crossing = (f[..., 0] >= 0.3) & (f[..., 1] >= 0.3)
    fa, md = fit.fa[single], fit.md[p.wm]
    return {"single_voxels": int(single.sum()), "fa_single_median": float(np.median(fa)),
            "fa_single_p5_p95": np.percentile(fa, [5, 95]).round(3).tolist(),
            "fa_single_in_0.6_0.85": float(np.mean((fa >= 0.6) & (fa <= 0.85))),
            "fa_crossing_median": float(np.median(fit.fa[crossing])),
            "md_wm_median": float(np.median(md)), "md_wm_p5_p95": np.percentile(md, [5, 95]).tolist(),
            "md_wm_in_0.6_0.9e-3": float(np.mean((md >= 0.6e-3) & (md <= 0.9e-3)))}


def csd_figures(p) -> dict:
    gtab = gradient_table(p.bvals, bvecs=p.bvecs)
    response, _ = auto_response_ssst(gtab, p.data, roi_radii=10, fa_thr=0.7)
    crossing = (p.fractions[..., 0] >= 0.3) & (p.fractions[..., 1] >= 0.3)
    model = ConstrainedSphericalDeconvModel(gtab, response, sh_order_max=8)
    peaks = peaks_from_model(model, p.data, default_sphere, relative_peak_threshold=0.25,
                             min_separation_angle=25, mask=crossing, npeaks=3)
    found, truth = peaks.peak_dirs[crossing], p.peaks[crossing][:, :2]
    n_found = np.sum(np.linalg.norm(found, axis=-1) > 0, axis=1)
    cos = np.abs(np.einsum("vpi,vti->vpt", found, truth)).max(axis=1)
    within = np.all(np.degrees(np.arccos(np.clip(cos, 0, 1))) <= 10, axis=1) & (n_found >= 2)
    return {"crossing_voxels": int(crossing.sum()), "two_or_more_peaks": float(np.mean(n_found >= 2)),
            "both_within_10deg": float(np.mean(within))}


def gt_figures(p) -> dict:
    ok_ends = ok_inside = total = 0
    coverage = []
    for b in p.bundles:
        first = endpoint_voxels(np.array([s[0] for s in b.streamlines]), p.shape)
        last = endpoint_voxels(np.array([s[-1] for s in b.streamlines]), p.shape)
        ok_ends += int(np.sum(b.head[tuple(first.T)] & b.tail[tuple(last.T)]))
        for s in b.streamlines:
            ok_inside += int(not (traversed_voxels([s], p.shape) & ~b.mask).any())
        total += len(b.streamlines)
        coverage.append(float((traversed_voxels(b.streamlines, p.shape) & b.mask).sum() / b.mask.sum()))
    return {"streamlines": total, "head_to_tail": ok_ends / total, "inside_mask": ok_inside / total,
            "mean_mask_coverage": float(np.mean(coverage))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _, check = parse_args(ap, "bench_phantom", TARGETS)
    with tempfile.TemporaryDirectory() as tmp:
        cli_seconds = time_cli(Path(tmp) / "fibercup")
    start = time.perf_counter()
    p = simulate(PhantomConfig(preset="fibercup", seed=0))
    simulate_seconds = time.perf_counter() - start
    same = np.array_equal(simulate(PhantomConfig(preset="fibercup", seed=0)).data, p.data)
    r1 = simulate(PhantomConfig(preset="random", seed=1, snr=None, streamlines_per_bundle=20))
    r2 = simulate(PhantomConfig(preset="random", seed=2, snr=None, streamlines_per_bundle=20))
    results = {
        "cli_simulate_fibercup_s": round(cli_seconds, 2), "simulate_in_memory_s": round(simulate_seconds, 2),
        "same_seed_identical": bool(same), "random_seeds_differ": bool(not np.array_equal(r1.fractions, r2.fractions)),
        "dti": dti_figures(p),
        "csd_default_snr20_32dirs": csd_figures(p),
        "csd_snr20_64dirs": csd_figures(simulate(PhantomConfig(preset="fibercup", seed=0, ndirs=64))),
        "csd_noisefree_32dirs": csd_figures(simulate(PhantomConfig(preset="fibercup", seed=0, snr=None))),
        "ground_truth": gt_figures(p),
    }
    for key, value in results.items():
        print(f"{key}: {value}")
    dti = results["dti"]
    check.measure("same_seed_identical", results["same_seed_identical"])
    check.measure("random_seeds_differ", results["random_seeds_differ"])
    check.measure("gt_head_to_tail", results["ground_truth"]["head_to_tail"])
    check.measure("gt_inside_mask", results["ground_truth"]["inside_mask"])
    check.measure("fa_single_median", dti["fa_single_median"])
    check.measure("fa_single_in_range", dti["fa_single_in_0.6_0.85"])
    check.measure("fa_single_minus_crossing", dti["fa_single_median"] - dti["fa_crossing_median"])
    check.measure("md_wm_median", dti["md_wm_median"])
    check.measure("md_wm_in_range", dti["md_wm_in_0.6_0.9e-3"])
    check.measure("csd_noisefree_both_within_10deg", results["csd_noisefree_32dirs"]["both_within_10deg"])
    check.finish(results)


if __name__ == "__main__":
    import warnings

    warnings.simplefilter("ignore")
    main()
