"""Randomised phantoms (issue 18, part 2): what 50 subjects' tissue and acquisition cover.

Run: ``.venv/bin/python benchmarks/bench_randomized.py [--check] [--subjects 50] [--preset crossing]``
(about three minutes on 2 cores). Prints readable tables, then one JSON object as the last line.

Each subject is ``simulate(PhantomConfig(preset, seed=s, randomize=True))`` for seeds 0..N-1
(the crossing preset with three bundles at 0/60/120 degrees by default: small and fast, and
its single-fibre arms hold hundreds of voxels), plus its noise-free twin (same seed with
``snr=None``: the same draws but the noise's). Figures, pooled over the subjects:

- single-fibre FA and MD: in the voxels one bundle fills (fraction >= 0.99 and no other
  bundle's mask), the tensor that voxel's drawn parameters imply (``randomize.tissue_tensor``:
  the signal's low-b limit, the definition the ranges are tuned on); for context, DIPY's WLS
  DTI on the noise-free signal of those voxels from the b0s and the subject's lowest shell;
- free-water fraction in the same voxels;
- achieved SNR: the noise sigma measured from the noise draw by maximum likelihood (the
  non-central chi law of the subject's coil count, given the noise-free twin's signal, over
  every volume of those voxels); SNR = mean noise-free b0 there / sigma (the S0 bias field
  included), and sigma against the stated one (S0 / SNR) as a check of the noise model;
- the acquisition: shell b-values, shells, directions per shell, b0s, coils, voxel sizes.

Each quantity's table: min, 5%, median, 95%, max and histogram counts. Targets (``--help``
lists them): for each range of docs/phantoms.md, the 5th-95th percentiles inside it and
both ends reached within a tolerance (min <= lo + tol, max >= hi - tol); every shell count
1-3 drawn; and the measured sigma against the stated one: within 4 standard errors in
every subject, and their median within 1%.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from dipy.core.gradients import gradient_table
from dipy.reconst.dti import TensorModel, fractional_anisotropy, mean_diffusivity
from scipy import optimize, stats

from _check import Target, parse_args
from difftract.io.gradients import B0_THRESHOLD
from difftract.phantom import PhantomConfig, simulate
from difftract.phantom.randomize import tissue_tensor

DOC = "docs/phantoms.md ranges (issue 18 part 2)"
# quantity: (lo, hi, tolerance for reaching the ends, unit scale for printing)
RANGES = {
    "fa": (0.3, 0.95, 0.05),
    "md": (0.5e-3, 1.3e-3, 0.1e-3),
    "f_free": (0.0, 0.2, 0.02),
    "snr": (8.0, 50.0, 10.0),
    "bval": (700.0, 3000.0, 150.0),
    "ndirs": (6, 150, 30),
    "nb0": (1, 10, 1),
    "coils": (1, 32, 16),
    "voxel_size": (1.25, 2.5, 0.25),
}
# The acquisition's tolerances follow from the sampler: in 400 batches of 50 draws (20,000
# acquisitions, no simulation) no end was missed but the stated SNR's top in 0.25% of the
# batches; a uniform voxel size misses by more than 0.25 mm with probability 0.8^50 ~ 1e-5.
BINS = {
    "fa": np.linspace(0.0, 1.0, 11), "md": np.linspace(0.2e-3, 2.0e-3, 10), "f_free": np.linspace(0, 0.25, 6),
    "snr": np.array([0, 8, 12, 16, 24, 32, 40, 50, 70]), "bval": np.arange(500, 3501, 500),
    "ndirs": np.array([6, 10, 20, 40, 80, 120, 151]), "nb0": np.arange(0.5, 11), "coils": np.array([1, 2, 4, 8, 16, 33]),
    "voxel_size": np.linspace(1.25, 2.5, 6), "shells": np.arange(0.5, 4),
}


def _targets() -> list[Target]:
    out = []
    for q, (lo, hi, tol) in RANGES.items():
        out += [Target(f"{q}_p5", ">=", lo, f"{DOC}: 5th percentile inside [{lo:g}, {hi:g}]"),
                Target(f"{q}_p95", "<=", hi, f"{DOC}: 95th percentile inside [{lo:g}, {hi:g}]"),
                Target(f"{q}_min", "<=", lo + tol, f"{DOC}: low end {lo:g} reached within {tol:g}"),
                Target(f"{q}_max", ">=", hi - tol, f"{DOC}: high end {hi:g} reached within {tol:g}")]
    out += [Target("shell_counts_drawn", "==", 3, f"{DOC}: one, two and three shells all drawn"),
            Target("sigma_max_z", "<=", 4.0, "stated SNR holds: measured noise sigma / (S0 / SNR) - 1 within 4 "
                   "standard errors (1 / sqrt(2 samples)) in every subject"),
            Target("sigma_median_rel_error", "range", (-0.01, 0.01), "stated SNR holds: median over subjects of "
                   "measured sigma / (S0 / SNR) - 1 within 1%")]
    return out


TARGETS = _targets()


def noise_sigma(noisy: np.ndarray, clean: np.ndarray, coils: int, guess: float) -> float:
    """Maximum-likelihood sigma of non-central chi noise (``coils`` coils) given the clean signal."""
    m, s = noisy.astype(np.float64).ravel(), clean.astype(np.float64).ravel()

    def nll(log_sigma: float) -> float:
        sigma = np.exp(log_sigma)
        # density of M: 2 m / sigma^2 * ncx2.pdf(m^2 / sigma^2; 2 coils, s^2 / sigma^2)
        return -np.sum(np.log(2 * m / sigma**2) + stats.ncx2.logpdf((m / sigma) ** 2, 2 * coils, (s / sigma) ** 2))

    res = optimize.minimize_scalar(nll, bounds=(np.log(guess) - 1.0, np.log(guess) + 1.0), method="bounded",
                                   options={"xatol": 1e-5})
    return float(np.exp(res.x))


def single_fibre_voxels(p) -> dict[int, np.ndarray]:
    """Flat voxel indices that one bundle fills, per bundle index."""
    f = p.fractions.reshape(-1, 3)
    masks = np.stack([b.mask.reshape(-1) for b in p.bundles], axis=1)
    single = (f[:, 0] >= 0.99) & (masks.sum(axis=1) == 1)
    owner = np.argmax(masks, axis=1)
    return {k: np.flatnonzero(single & (owner == k)) for k in range(len(p.bundles))}


def subject(seed: int, args) -> dict:
    config = dict(preset=args.preset, seed=seed, randomize=True, streamlines_per_bundle=20)
    if args.preset == "crossing":
        config["angles"] = (60.0, 120.0)
    if args.preset == "random":
        config["n_bundles"] = args.n_bundles
    start = time.perf_counter()
    p = simulate(PhantomConfig(**config))
    seconds = time.perf_counter() - start
    clean = simulate(PhantomConfig(**{**config, "snr": None}))
    acq, draw = p.acquisition, p.tissue_draw
    fa, md, free, voxels = [], [], [], []
    for k, vox in single_fibre_voxels(p).items():
        fibre = draw.fibre(k, vox)
        evals = tissue_tensor(fibre)
        a, m = fractional_anisotropy(evals), mean_diffusivity(evals)
        fa.append(a), md.append(m), free.append(fibre.f_free), voxels.append(vox)
    voxels = np.concatenate(voxels)
    noisy_sf = p.data.reshape(-1, p.data.shape[-1])[voxels]
    clean_sf = clean.data.reshape(-1, p.data.shape[-1])[voxels]
    b0 = p.bvals <= B0_THRESHOLD
    stated_sigma = draw.tissue.s0_fibre / acq.snr
    sigma = noise_sigma(noisy_sf, clean_sf, acq.coils, stated_sigma)
    # context: DTI on the noise-free signal from the b0s and the lowest shell
    lowest = p.bvals[~b0].min()
    use = b0 | np.isclose(p.bvals, lowest)
    fit = TensorModel(gradient_table(p.bvals[use], bvecs=p.bvecs[use]), fit_method="WLS").fit(clean_sf[:, use])
    return {"seed": seed, "seconds": seconds, "volumes": len(p.bvals), "single_fibre_voxels": len(voxels),
            "fa": np.concatenate(fa), "md": np.concatenate(md), "f_free": np.concatenate(free),
            "dti_fa": fit.fa, "dti_md": fit.md, "dti_bval": float(lowest),
            "snr": float(clean_sf[:, b0].mean() / sigma), "sigma_rel_error": sigma / stated_sigma - 1.0,
            "sigma_standard_error": 1.0 / np.sqrt(2.0 * noisy_sf.size),  # ML sigma at high SNR
            "bval": list(acq.bvals), "ndirs": list(acq.ndirs), "nb0": acq.nb0, "coils": acq.coils,
            "shells": len(acq.bvals), "voxel_size": acq.voxel_size, "stated_snr": acq.snr}


def distribution(values: np.ndarray, bins: np.ndarray) -> dict:
    values = np.asarray(values, dtype=np.float64)
    q = np.percentile(values, [0, 5, 50, 95, 100])
    counts, _ = np.histogram(values, bins=bins)
    return {"n": int(values.size), "min": q[0], "p5": q[1], "median": q[2], "p95": q[3], "max": q[4],
            "bins": bins.tolist(), "counts": counts.tolist(),
            "outside_bins": int(np.sum((values < bins[0]) | (values > bins[-1])))}


def print_table(name: str, d: dict, scale: float = 1.0, unit: str = "") -> None:
    row = " ".join(f"{d[k] * scale:9.4g}" for k in ("min", "p5", "median", "p95", "max"))
    print(f"{name + unit:<22}{d['n']:>8} {row}")
    edges = [f"{b * scale:g}" for b in d["bins"]]
    hist = "  ".join(f"[{a},{b}):{c}" for a, b, c in zip(edges[:-1], edges[1:], d["counts"]))
    print(f"{'':22}histogram {hist}" + (f"  outside:{d['outside_bins']}" if d["outside_bins"] else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=50, help="randomised subjects, seeds 0..N-1 (default: 50)")
    ap.add_argument("--preset", choices=("crossing", "random", "fibercup"), default="crossing",
                    help="geometry (default: crossing with three bundles)")
    ap.add_argument("--n-bundles", type=int, default=4, help="random preset: bundles per subject (default: 4)")
    args, check = parse_args(ap, "bench_randomized", TARGETS)
    rows = []
    with check.measuring(*[t.name for t in TARGETS], what="simulation"):
        for seed in range(args.subjects):
            rows.append(subject(seed, args))
            r = rows[-1]
            print(f"subject {seed:3d}: {r['seconds']:5.2f} s, {r['volumes']:3d} volumes, shells {r['bval']} x "
                  f"{r['ndirs']}, {r['nb0']} b0, SNR {r['stated_snr']:g} (measured {r['snr']:.3g}, sigma "
                  f"{r['sigma_rel_error']:+.2%}), {r['coils']} coil(s), {r['voxel_size']} mm, "
                  f"{r['single_fibre_voxels']} single-fibre voxels", flush=True)

    pooled = {
        "fa": np.concatenate([r["fa"] for r in rows]), "md": np.concatenate([r["md"] for r in rows]),
        "f_free": np.concatenate([r["f_free"] for r in rows]),
        "snr": [r["snr"] for r in rows], "bval": [b for r in rows for b in r["bval"]],
        "ndirs": [n for r in rows for n in r["ndirs"]], "nb0": [r["nb0"] for r in rows],
        "coils": [r["coils"] for r in rows], "voxel_size": [r["voxel_size"] for r in rows if r["voxel_size"]],
        "shells": [r["shells"] for r in rows],
    }
    tables = {q: distribution(v, BINS[q]) for q, v in pooled.items() if len(v)}
    context = {"dti_fa": distribution(np.concatenate([r["dti_fa"] for r in rows]), BINS["fa"]),
               "dti_md": distribution(np.concatenate([r["dti_md"] for r in rows]), BINS["md"])}
    print(f"\n{len(rows)} subjects ({args.preset}); pooled over single-fibre voxels (tissue) or subjects/shells")
    print(f"{'quantity':<22}{'n':>8} {'min':>9} {'5%':>9} {'median':>9} {'95%':>9} {'max':>9}")
    for q, d in tables.items():
        print_table(q, d, 1e3 if q == "md" else 1.0, " (1e-3 mm2/s)" if q == "md" else "")
    print("context: DIPY WLS DTI of the noise-free signal, b0s + lowest shell "
          f"(b = {min(r['dti_bval'] for r in rows):g}-{max(r['dti_bval'] for r in rows):g})")
    print_table("dti_fa", context["dti_fa"])
    print_table("dti_md", context["dti_md"], 1e3, " (1e-3 mm2/s)")
    rician = np.mean([r["coils"] == 1 for r in rows])
    sigma_err = np.array([r["sigma_rel_error"] for r in rows])
    sigma_z = sigma_err / np.array([r["sigma_standard_error"] for r in rows])
    print(f"Rician subjects {rician:.0%}; measured/stated sigma - 1: median {np.median(sigma_err):+.2%}, "
          f"max |.| {np.abs(sigma_err).max():.2%} ({np.abs(sigma_z).max():.2f} standard errors); simulate {np.mean([r['seconds'] for r in rows]):.2f} s per "
          f"subject (max {max(r['seconds'] for r in rows):.2f} s)")

    for q in RANGES:
        for stat in ("p5", "p95", "min", "max"):
            if q in tables:
                check.measure(f"{q}_{stat}", float(tables[q][stat]))
            elif q == "voxel_size":
                check.skip(f"{q}_{stat}", f"preset {args.preset} has a fixed voxel size")
    check.measure("shell_counts_drawn", len(set(pooled["shells"])))
    check.measure("sigma_max_z", float(np.abs(sigma_z).max()))
    check.measure("sigma_median_rel_error", float(np.median(sigma_err)))
    check.finish({"subjects": len(rows), "preset": args.preset, "tables": tables, "context": context,
                  "rician_share": float(rician), "sigma_rel_error": sigma_err.tolist(), "sigma_z": sigma_z.tolist(),
                  "seconds_per_subject": float(np.mean([r["seconds"] for r in rows]))})


if __name__ == "__main__":
    import warnings

    warnings.simplefilter("ignore")
    main()
