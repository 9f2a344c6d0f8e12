"""difftract's trackers against MRtrix3's tckgen and DIPY's, same fODF, same seeds, matched settings.

Run: ``.venv/bin/python benchmarks/bench_vs_mrtrix.py [--quick] [--check] [--workdir DIR]``
(``--quick``: fibercup only, a few minutes on 2 busy cores; without it the whole-brain
phantom too). Prints readable figures, then one JSON object as the last line. Needs
MRtrix3's ``tckgen`` and ``sh2amp`` on the PATH (Debian: ``apt-get install mrtrix3``); without
them the MRtrix rows are skipped with that message (and ``--check`` fails: the reference
could not be measured). It installs nothing.

Steps, one function each, per phantom:

1. the phantom: ``simulate`` + ``save_phantom`` (fibercup; ``brain``: 77x95x82 at 2 mm, 32
   directions at b = 1000, ground truth in ``gt/scoring.json``), reused from ``--workdir``;
2. the fODF: difftract's CSD (lmax 8, non-legacy descoteaux07, auto response) in the white
   matter dilated by one voxel (every trilinear neighbour of a point inside the WM), written
   as NIfTI, converted to MRtrix's basis (non-legacy tournier07, through DIPY's documented
   maps) and **checked by sampling both** at 64 directions in every WM voxel: difftract's SH
   evaluated here against ``sh2amp`` on the converted file (max difference relative to the
   largest amplitude);
3. the seeds: ``tckgen -seed_grid_per_voxel SEEDMASK N`` and difftract's ``grid_seeds`` on the
   same mask are the same points (checked on the seeds tckgen reports with
   ``-output_seeds``); DIPY gets them in world mm. On the brain the seed mask is every k-th
   WM voxel (``--max-seeds``) to keep the run to minutes;
4. the trackers, quiet, interleaved: SD_Stream, difftract ``det``, DIPY ``deterministic_tracking``,
   difftract ``peak`` (the differentiable getter, on per-voxel peaks refined to the
   continuous fODF maxima: :mod:`difftract.reconst.peak_refine`; ``--vertex-peaks`` for
   DIPY's sphere-vertex peaks), iFOD2, difftract ``prob``, DIPY ``probabilistic_tracking``;
   each tracked once; then SD_Stream a second time, against itself;
5. per tracker: streamlines, wall time, seeds/s, streamlines/s, the Tractometer row; ``det``,
   ``peak`` and DIPY's det against SD_Stream on paired seeds (the same seed point): the
   fraction of pairs whose MDF is <= 1 mm and <= 0.5 mm, and the Dice of the two density
   maps (voxels a streamline traverses: ``difftract.eval.overlap``); ratios in streamlines/s; the same figures for
   SD_Stream's rerun against its first run (its ceiling: see *Agreement* below);
6. unless ``--no-loaded``: on a subset of the seeds (``--loaded-seeds``), each tracker timed
   quiet and then with one spinning process per core, alternately ``--repeats`` times:
   slowdown = fastest loaded / fastest quiet (the machine may be shared: say its load).

Distance: MDF = QuickBundles' minimum average direct-flip distance, both streamlines
resampled to 20 points equally spaced along their length (mm). Pairs: seeds where both
trackers kept a streamline; the seeds only one kept are counted beside. Also given: the
share of pairs that leave the seed along the same orientation (within 20 degrees) and
their fraction within 1 mm / 0.5 mm, since SD_Stream picks its first peak by another rule;
and the fraction of pairs whose symmetric Hausdorff distance is < 1 mm, the measure of the
differentiable-propagator paper (arXiv 2511.14807: > 93% of 10,000 streamlines of its
PyTorch port of SD_Stream against MRtrix's, the same algorithm on both sides; ``peak`` is
a different rule, a blend of per-voxel peaks).

What limits agreement (SD_Stream's own reruns agree on only ~90%), measured: ``docs/performance.md``.

Timing: tckgen's whole run (reading the fODF, an uncompressed .nii, seeding, tracking,
writing the .tck and the seeds), the basis conversion excluded; difftract: building the
tracker from the fODF in memory plus tracking, after a 100-seed warm-up (``peak``'s peak
extraction, like MRtrix's file reading, is a one-off cost; it is reported beside, not
counted); DIPY: the tracking call. 2 threads each: ``-nthreads 2``, ``torch.set_num_threads(2)``,
``nbr_threads=2``.

Matched: 1 mm step, 45 degrees per step, min 10 mm / max 250 mm, bidirectional from every
seed, each seed tried once (``-select 0``; grid seeding is finite), Euler steps for the
first-order trackers, the stop where a streamline leaves the WM mask (``-mask WM``: MRtrix
tests the nearest voxel, as DIPY's ``BinaryStoppingCriterion`` and difftract's
``BinaryCriterion`` do; ``-stop`` is about include regions, not this). Settings that cannot
match, and what was chosen:

- amplitude threshold: MRtrix's ``-cutoff`` is an absolute fODF amplitude that also *stops*
  a streamline; DIPY's and difftract's ``pmf_threshold`` (0.1) is relative to each point's
  maximum and only masks the pmf. Chosen: cutoff = 0.1 x the median over WM voxels of the
  voxel's largest amplitude (about MRtrix's default 0.1 for these fODFs);
- directions: SD_Stream follows the continuous fODF peak (Newton steps on the SH) and
  starts each seed along the peak its search reaches from a random (or the thread's
  previous) direction; ``det`` takes the best of
  DIPY's 362-vertex sphere and starts along the largest peak; ``peak`` blends per-voxel
  peaks refined to the continuous maxima and starts along the largest. iFOD2 draws arcs (4 samples,
  power 1/4, rejection sampling); ``prob`` draws a vertex from the thresholded pmf;
- lengths: MRtrix truncates a streamline at ``-maxlength`` and keeps it; DIPY and difftract
  drop streamlines over ``max_len`` (DIPY's rule);
- seeds SD_Stream cannot start: that peak search fails (or lands under the cutoff) at
  about 45% of fibercup's seeds (22% at ``--cutoff 0.0001``) ("Invalid seed
  point" in ``tckgen -info``; neither ``-seed_cutoff`` nor ``-max_attempts_per_seed`` changes
  it); DIPY and difftract start along the largest peak and lose no seed there. The failed
  seeds are cheap and count in SD_Stream's seeds/s, so streamlines/s is the rate compared,
  and its agreement with ``det``/``peak`` is over the seeds both kept.

Targets (``--check`` exits 1 when a hard one is missed or could not be measured, e.g. without
tckgen; ``--help`` lists them), per phantom, from issue 24: the sampled basis difference
<= 1e-5; in streamlines/s ``det`` >= 1.5x SD_Stream and DIPY's det, ``prob`` >= 2x iFOD2 and
DIPY's prob; ``peak`` within 1 mm (MDF) of SD_Stream on >= 93% of paired seeds; loaded
slowdown of ``det``/``prob`` no worse than SD_Stream's/iFOD2's and DIPY's (ratio <= 1).
``--quick`` skips the brain's.
"""

from __future__ import annotations

import difftract  # noqa: F401  first, before torch: libgomp's passive waits (difftract.threads), as the CLI has them

import argparse
import json
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy.ndimage import binary_dilation

import _mrtrix as mx
from _check import Target, parse_args
from difftract.eval.tractometer import load_scoring, score
from difftract.phantom import PhantomConfig, save_phantom, simulate
from difftract.reconst.csd import CsdModel
from difftract.reconst.peak_refine import refine_peaks
from difftract.reconst.peaks import peaks_from_sh
from difftract.tracking.getters import make_getter
from difftract.tracking.seeding import grid_seeds
from difftract.tracking.sh_field import SHField
from difftract.tracking.stopping import BinaryCriterion
from difftract.tracking.tracker import Tracker, TrackingParams

THREADS = 2
PMF_THRESHOLD = 0.1
PAIRS = {"det": "SD_Stream", "peak": "SD_Stream", "dipy_det": "SD_Stream"}   # agreement on paired seeds
ORDER = ("SD_Stream", "det", "dipy_det", "peak", "iFOD2", "prob", "dipy_prob")
LOADED = ("SD_Stream", "det", "dipy_det", "iFOD2", "prob", "dipy_prob")


def _targets(phantom: str) -> list[Target]:
    src = "issue 24 acceptance"
    return [
        Target(f"{phantom}_basis_max_rel_diff", "<=", 1e-5, "issue 24: the fODF converted exactly (checked by sampling)"),
        Target(f"{phantom}_det_vs_sdstream", ">=", 1.5, f"{src}: det >= 1.5x SD_Stream in streamlines/s"),
        Target(f"{phantom}_prob_vs_ifod2", ">=", 2.0, f"{src}: prob >= 2x iFOD2 in streamlines/s"),
        Target(f"{phantom}_det_vs_dipy", ">=", 1.5, f"{src}: the same against DIPY's deterministic_tracking"),
        Target(f"{phantom}_prob_vs_dipy", ">=", 2.0, f"{src}: the same against DIPY's probabilistic_tracking"),
        Target(f"{phantom}_peak_within_1mm", ">=", 0.93, f"{src}: peak vs SD_Stream on paired seeds, MDF <= 1 mm "
               "(the differentiable-propagator paper: > 93%)"),
        Target(f"{phantom}_loaded_det_vs_sdstream", "<=", 1.0, f"{src}: det's loaded slowdown / SD_Stream's"),
        Target(f"{phantom}_loaded_det_vs_dipy", "<=", 1.0, f"{src}: det's loaded slowdown / DIPY det's"),
        Target(f"{phantom}_loaded_prob_vs_ifod2", "<=", 1.0, f"{src}: prob's loaded slowdown / iFOD2's"),
        Target(f"{phantom}_loaded_prob_vs_dipy", "<=", 1.0, f"{src}: prob's loaded slowdown / DIPY prob's"),
    ]


TARGETS = _targets("fibercup") + _targets("brain")


@dataclass(frozen=True)
class Settings:
    step_mm: float = 1.0
    angle_deg: float = 45.0
    min_len_mm: float = 10.0
    max_len_mm: float = 250.0
    grid: int = 1                    # seeds per voxel per axis
    cutoff: float = float("nan")     # MRtrix's absolute amplitude, set from the fODF
    cutoff_relative: float = 0.1     # ... as this fraction of the median WM voxel's largest amplitude


@dataclass
class Inputs:
    """One phantom ready to track: files for MRtrix, arrays for difftract and DIPY."""

    name: str
    dir: Path
    affine: np.ndarray
    wm: np.ndarray
    coeffs: np.ndarray               # non-legacy descoteaux07, data-array frame
    fod_mrtrix: Path
    wm_path: Path
    fit_seconds: float
    basis: dict = field(default_factory=dict)

    @property
    def voxel_sizes(self) -> list[float]:
        return [float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0)]


@dataclass
class Run:
    """One tracker's pass over the seeds."""

    seconds: float
    seeds: int
    streamlines: list[np.ndarray]    # voxel coordinates
    seed_world: np.ndarray           # (S, 3) each streamline's seed, mm

    def figures(self) -> dict:
        n = len(self.streamlines)
        return {"streamlines": n, "seconds": self.seconds, "seeds": self.seeds,
                "seeds_per_s": self.seeds / self.seconds, "streamlines_per_s": n / self.seconds}


# ------------------------------------------------------------------------------------ 1-2. inputs
def prepare_phantom(preset: str, root: Path) -> Path:
    """The phantom's directory under ``root``, simulated and saved unless already there."""
    out = root / preset
    if not (out / "gt" / "scoring.json").is_file():
        start = time.perf_counter()
        save_phantom(simulate(PhantomConfig(preset=preset, seed=0)), out, force=True)
        print(f"{preset}: simulated and saved in {time.perf_counter() - start:.1f} s -> {out}", flush=True)
    return out


def fit_fod(phantom_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """difftract's CSD (lmax 8, non-legacy, auto response) in the WM dilated by one voxel."""
    from difftract.io.dwi import load_dwi

    wm_img = nib.load(phantom_dir / "wm.nii.gz")
    wm, affine = np.asarray(wm_img.dataobj) > 0, wm_img.affine
    cached = phantom_dir / "fod_difftract.nii.gz"
    if cached.is_file():
        return np.asarray(nib.load(cached).dataobj, dtype=np.float64), wm, affine, float("nan")
    fit_mask = binary_dilation(wm, structure=np.ones((3, 3, 3), bool))
    nib.save(nib.Nifti1Image(fit_mask.astype(np.uint8), affine), phantom_dir / "fit_mask.nii.gz")
    dwi = load_dwi(phantom_dir / "dwi.nii.gz", phantom_dir / "dwi.bval", phantom_dir / "dwi.bvec",
                   mask=phantom_dir / "fit_mask.nii.gz")
    start = time.perf_counter()
    coeffs = CsdModel(dwi.gtab, lmax=8, legacy=False).fit(dwi.signal, progress=False).coeffs
    seconds = time.perf_counter() - start
    nib.save(nib.Nifti1Image(coeffs.astype(np.float32), affine), cached)
    return np.asarray(coeffs, dtype=np.float64), wm, affine, seconds


def prepare(preset: str, root: Path, tools) -> Inputs:
    phantom_dir = prepare_phantom(preset, root)
    coeffs, wm, affine, fit_seconds = fit_fod(phantom_dir)
    fod_mrtrix = phantom_dir / "fod_mrtrix.nii"     # uncompressed: tckgen's timing includes reading it
    nib.save(nib.Nifti1Image(mx.to_mrtrix_basis(coeffs).astype(np.float32), affine), fod_mrtrix)
    inputs = Inputs(preset, phantom_dir, affine, wm, coeffs, fod_mrtrix, phantom_dir / "wm.nii.gz", fit_seconds)
    if tools:
        inputs.basis = mx.sampled_difference(coeffs, wm, fod_mrtrix, phantom_dir)
    print(f"{preset}: grid {wm.shape}, {int(wm.sum())} WM voxels, CSD lmax 8 "
          f"({'cached' if np.isnan(fit_seconds) else f'{fit_seconds:.1f} s'}); basis check: {inputs.basis or 'no sh2amp'}",
          flush=True)
    return inputs


# ------------------------------------------------------------------------------------ 3. seeds
def seed_mask(inputs: Inputs, max_seeds: int | None, grid: int, tag: str) -> tuple[Path, np.ndarray]:
    """A seed mask (every k-th WM voxel) on disk for tckgen, and its grid seeds (voxel coordinates)."""
    mask = mx.subsample_mask(inputs.wm, None if max_seeds is None else max(1, max_seeds // grid ** 3))
    path = inputs.dir / f"seeds_{tag}.nii.gz"
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), inputs.affine), path)
    return path, grid_seeds(mask, grid).numpy()


# ------------------------------------------------------------------------------------ 4. trackers
def run_mrtrix(algorithm: str, inputs: Inputs, mask_path: Path, s: Settings, tag: str) -> Run:
    ts = mx.TckgenSettings(s.step_mm, s.angle_deg, s.min_len_mm, s.max_len_mm, s.cutoff, THREADS)
    r = mx.tckgen(algorithm, inputs.fod_mrtrix, mask_path, s.grid, inputs.wm_path, ts, inputs.dir,
                  inputs.affine, f"{tag}_{algorithm}")
    return Run(r.seconds, r.seeds, r.streamlines, r.seed_world)


def run_difftract(method: str, inputs: Inputs, seeds: np.ndarray, s: Settings, peaks=None) -> Run:
    def build() -> Tracker:
        field_ = SHField(inputs.coeffs, legacy=False, pmf_threshold=PMF_THRESHOLD)
        getter = make_getter(method, sh=field_, peaks=peaks, max_angle=s.angle_deg)
        return Tracker(getter, BinaryCriterion(inputs.wm), inputs.voxel_sizes,
                       TrackingParams(step_mm=s.step_mm, min_len_mm=s.min_len_mm, max_len_mm=s.max_len_mm))

    for _ in build().track(seeds[:100]):      # torch's first calls, the allocator: not timed
        pass
    start = time.perf_counter()
    chunks = list(build().track(seeds, seed=1))
    seconds = time.perf_counter() - start
    streamlines = [x.numpy().astype(np.float64) for c in chunks for x in c.split()]
    index = np.concatenate([c.seed_index.numpy() for c in chunks]) if chunks else np.zeros(0, int)
    return Run(seconds, len(seeds), streamlines, mx.to_world(seeds[index], inputs.affine))


def run_dipy(method: str, inputs: Inputs, seeds: np.ndarray, s: Settings) -> Run:
    from dipy.tracking.stopping_criterion import BinaryStoppingCriterion
    from dipy.tracking.tracker import deterministic_tracking, probabilistic_tracking

    track = {"det": deterministic_tracking, "prob": probabilistic_tracking}[method]
    world = mx.to_world(seeds, inputs.affine)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        out = list(track(world, BinaryStoppingCriterion(inputs.wm.astype(float)), inputs.affine,
                         sh=inputs.coeffs, basis_type="descoteaux07", legacy=False, step_size=s.step_mm,
                         max_angle=s.angle_deg, min_len=s.min_len_mm, max_len=s.max_len_mm,
                         pmf_threshold=PMF_THRESHOLD, nbr_threads=THREADS, random_seed=1, save_seeds=True))
        seconds = time.perf_counter() - start
    streamlines = [mx.to_voxel(np.asarray(x, dtype=np.float64), inputs.affine) for x, _ in out]
    seed_world = np.array([sd for _, sd in out], dtype=np.float64).reshape(-1, 3)
    return Run(seconds, len(seeds), streamlines, seed_world)


def peak_field(inputs: Inputs, refine: bool) -> tuple[torch.Tensor, float]:
    """``peak``'s per-voxel peaks: DIPY's sphere-vertex peaks, moved to the continuous fODF
    maxima (:mod:`difftract.reconst.peak_refine`) unless ``refine`` is False."""
    start = time.perf_counter()
    dirs = peaks_from_sh(inputs.coeffs, inputs.wm, legacy=False, progress=False).dirs
    if refine:
        dirs, _ = refine_peaks(inputs.coeffs, dirs, legacy=False)
    return torch.as_tensor(dirs), time.perf_counter() - start


def runner(name: str, inputs: Inputs, s: Settings, tools, peaks):
    """A callable ``(seeds, seed_mask_path, tag) -> Run`` for tracker ``name``, or None when MRtrix is absent."""
    if name in ("SD_Stream", "iFOD2"):
        return (lambda seeds, mask, tag: run_mrtrix(name, inputs, mask, s, tag)) if tools else None
    if name.startswith("dipy_"):
        return lambda seeds, mask, tag: run_dipy(name[5:], inputs, seeds, s)
    return lambda seeds, mask, tag: run_difftract(name, inputs, seeds, s, peaks)


# ------------------------------------------------------------------------------------ 5. figures
def tractometer_row(run: Run, config) -> dict:
    r = score(run.streamlines, config).scores
    return {"VC": r["VS_ratio"], "IC": r["IC_ratio"], "NC": r["NC_ratio"], "VB": r["VB"], "IB": r["IB"],
            "OL": r.get("mean_OL"), "OR": r.get("mean_OR_gt"), "F1": r.get("mean_f1")}


def show_table(rows: dict) -> None:
    print(f"  {'tracker':10} {'streamlines':>11} {'seconds':>8} {'seeds/s':>9} {'sl/s':>9}  "
          f"{'VC':>5} {'IC':>5} {'NC':>5} {'VB':>3} {'IB':>3} {'OL':>5} {'OR':>5} {'F1':>5}")
    for name, r in rows.items():
        t = r["tractometer"]
        print(f"  {name:10} {r['streamlines']:11,} {r['seconds']:8.2f} {r['seeds_per_s']:9,.0f} "
              f"{r['streamlines_per_s']:9,.0f}  {t['VC']:5.3f} {t['IC']:5.3f} {t['NC']:5.3f} {t['VB']:3} {t['IB']:3} "
              f"{t['OL'] or 0:5.3f} {t['OR'] or 0:5.3f} {t['F1'] or 0:5.3f}")


def ratio(rows: dict, a: str, b: str) -> float | None:
    if a not in rows or b not in rows:
        return None
    return rows[a]["streamlines_per_s"] / rows[b]["streamlines_per_s"]


# ------------------------------------------------------------------------------------ 6. loaded
def slowdown_ratio(loaded: dict, ours: str, ref: str) -> float | None:
    if ours not in loaded or ref not in loaded:
        return None
    return loaded[ours]["slowdown"] / loaded[ref]["slowdown"]


# ------------------------------------------------------------------------------------ per phantom
def bench_phantom(preset: str, root: Path, args, tools, check) -> dict:
    inputs = prepare(preset, root, tools)
    s = Settings(grid=args.grid, cutoff=mx.amplitude_cutoff(inputs.coeffs, inputs.wm, args.cutoff),
                 cutoff_relative=args.cutoff)
    max_seeds = args.max_seeds if preset == "fibercup" else args.brain_max_seeds
    mask_path, seeds = seed_mask(inputs, max_seeds, s.grid, "main")
    peaks, peak_seconds = peak_field(inputs, refine=not args.vertex_peaks)
    runners = {name: runner(name, inputs, s, tools, peaks) for name in ORDER}
    print(f"{preset}: {len(seeds):,} seeds ({s.grid}^3 per voxel of {len(seeds) // s.grid ** 3:,} "
          f"seed voxels); step {s.step_mm} mm, {s.angle_deg:g} deg, {s.min_len_mm:g}-{s.max_len_mm:g} mm, "
          f"MRtrix cutoff {s.cutoff:.4f} ({s.cutoff_relative:g} x median max amplitude); peak extraction for 'peak' "
          f"({'vertex' if args.vertex_peaks else 'refined'}) {peak_seconds:.1f} s (not counted); "
          f"load {mx.load_average()}", flush=True)
    runs: dict[str, Run] = {}
    for name in ORDER:
        if runners[name] is not None:
            runs[name] = runners[name](seeds, mask_path, "main")
            print(f"  {name:10} {runs[name].seconds:8.2f} s, {len(runs[name].streamlines):,} streamlines "
                  f"(load {mx.load_average()})", flush=True)
    config = load_scoring(inputs.dir / "gt" / "scoring.json")
    rows = {name: {**run.figures(), "tractometer": tractometer_row(run, config)} for name, run in runs.items()}
    result = {"grid": list(inputs.wm.shape), "wm_voxels": int(inputs.wm.sum()), "settings": asdict(s),
              "csd_fit_seconds": inputs.fit_seconds, "basis_check": inputs.basis, "peak_extraction_s": peak_seconds,
              "peak_field": "vertex" if args.vertex_peaks else "refined",
              "load_after_quiet_pass": mx.load_average(), "rows": rows}
    print(f"{preset} (load {result['load_after_quiet_pass']}):")
    show_table(rows)
    if "SD_Stream" in runs:
        result["seed_check"] = mx.grid_check(runs["SD_Stream"].seed_world, runs["SD_Stream"].seeds,
                                             mx.to_world(seeds, inputs.affine))
        print(f"  seeds: {result['seed_check']}")
        result["agreement"] = {f"{a}_vs_{b}": mx.agreement(runs[a], runs[b], inputs.affine, inputs.wm.shape)
                               for a, b in PAIRS.items()}
        # SD_Stream against itself: its random first direction and seed failures bound any agreement
        rerun = run_mrtrix("SD_Stream", inputs, mask_path, s, "rerun")
        result["agreement"]["SD_Stream_rerun_vs_SD_Stream"] = mx.agreement(rerun, runs["SD_Stream"], inputs.affine,
                                                                           inputs.wm.shape)
        for k, v in result["agreement"].items():
            print(f"  {k:22} paired {v['paired']:6,} (only ours {v['only_ours']}, only MRtrix {v['only_theirs']}): "
                  f"MDF <= 1 mm {v['within_1mm']:.1%}, <= 0.5 mm {v['within_0.5mm']:.1%}, median "
                  f"{v['median_mdf_mm']:.2f} mm; density Dice {v['density_dice']:.3f}; leaving the seed the same "
                  f"way {v['same_start']:.1%}, of which <= 1 mm {v['within_1mm_same_start'] or 0:.1%}, <= 0.5 mm "
                  f"{v['within_0.5mm_same_start'] or 0:.1%}; Hausdorff < 1 mm {v['hausdorff_within_1mm'] or 0:.1%} "
                  f"(same start {v['hausdorff_within_1mm_same_start'] or 0:.1%})")
    result["ratios"] = {"det_vs_sdstream": ratio(rows, "det", "SD_Stream"), "prob_vs_ifod2": ratio(rows, "prob", "iFOD2"),
                        "det_vs_dipy": ratio(rows, "det", "dipy_det"), "prob_vs_dipy": ratio(rows, "prob", "dipy_prob"),
                        "peak_vs_sdstream": ratio(rows, "peak", "SD_Stream")}
    print("  streamlines/s ratios: " + ", ".join(f"{k} {v:.2f}x" for k, v in result["ratios"].items() if v))
    result["loaded"] = None
    if not args.no_loaded:
        print(f"{preset}: loaded machine, {args.loaded_seeds} seeds at most:", flush=True)
        mask_path, subset = seed_mask(inputs, args.loaded_seeds, s.grid, "loaded")
        result["loaded"] = mx.loaded_pass({k: runners[k] for k in LOADED if runners[k] is not None}, subset,
                                          mask_path, args.repeats)
    record_targets(check, preset, result, tools)
    return result


def record_targets(check, p: str, result: dict, tools) -> None:
    """Each target of phantom ``p``; one that needs MRtrix is unmeasured (with the install hint) without it."""
    missing = mx.INSTALL_HINT + " (tckgen/sh2amp not found)"

    def measure(name: str, value, needs_mrtrix: bool) -> None:
        if value is None:
            check.unmeasured(f"{p}_{name}", missing if needs_mrtrix and not tools else "not measured")
        else:
            check.measure(f"{p}_{name}", value)

    measure("basis_max_rel_diff", result["basis_check"].get("max_rel_diff"), True)
    for key, mrtrix in (("det_vs_sdstream", True), ("prob_vs_ifod2", True), ("det_vs_dipy", False),
                        ("prob_vs_dipy", False)):
        measure(key, result["ratios"][key], mrtrix)
    measure("peak_within_1mm", (result.get("agreement") or {}).get("peak_vs_SD_Stream", {}).get("within_1mm"), True)
    loaded = result["loaded"]
    for key, ours, ref, mrtrix in (("loaded_det_vs_sdstream", "det", "SD_Stream", True),
                                   ("loaded_det_vs_dipy", "det", "dipy_det", False),
                                   ("loaded_prob_vs_ifod2", "prob", "iFOD2", True),
                                   ("loaded_prob_vs_dipy", "prob", "dipy_prob", False)):
        if loaded is None:
            check.skip(f"{p}_{key}", "--no-loaded")
        else:
            measure(key, slowdown_ratio(loaded, ours, ref), mrtrix)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fibercup only")
    ap.add_argument("--workdir", help="keep the phantoms, fODFs and tractograms here (reused on the next run)")
    ap.add_argument("--grid", type=int, default=1, help="seeds per voxel per axis (default 1: voxel centres)")
    ap.add_argument("--max-seeds", type=int, default=None, help="fibercup: at most this many seeds (default: all WM)")
    ap.add_argument("--brain-max-seeds", type=int, default=4000, help="brain: at most this many seeds (default 4000)")
    ap.add_argument("--loaded-seeds", type=int, default=4000, help="seeds of the loaded pass (default 4000: two chunks, so both of difftract's workers run)")
    ap.add_argument("--repeats", type=int, default=2, help="quiet/loaded alternations per tracker (default 2)")
    ap.add_argument("--no-loaded", action="store_true", help="skip the loaded-machine pass")
    ap.add_argument("--cutoff", type=float, default=0.1,
                    help="MRtrix's -cutoff as this fraction of the median WM voxel's largest fODF amplitude "
                         "(default 0.1; see the docstring for lower values)")
    ap.add_argument("--vertex-peaks", action="store_true",
                    help="'peak' on DIPY's sphere-vertex peaks (default: refined to the continuous maxima)")
    args, check = parse_args(ap, "bench_vs_mrtrix", TARGETS)
    torch.set_num_threads(THREADS)
    tools = mx.mrtrix_tools()
    if tools is None:
        print(f"MRtrix3 not found: {mx.INSTALL_HINT}. The MRtrix rows are skipped "
              "(with --check this run fails: the reference could not be measured).", flush=True)
    figures = {"benchmark": "bench_vs_mrtrix", "torch_threads": torch.get_num_threads(), "threads": THREADS,
               "load_start": mx.load_average(), "mrtrix": tools, "phantoms": {}}
    presets = ("fibercup",) if args.quick else ("fibercup", "brain")
    with mx.workdir(args.workdir) as root:
        for preset in presets:
            figures["phantoms"][preset] = bench_phantom(preset, Path(root), args, tools, check)
    for name in (t.name for t in TARGETS):
        if name.startswith("brain_") and args.quick and check.pending(name):
            check.skip(name, "--quick runs fibercup only")
    figures["load_end"] = mx.load_average()
    check.finish(json.loads(json.dumps(figures, default=_json)))


def _json(o):
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


if __name__ == "__main__":
    main()
