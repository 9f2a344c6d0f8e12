"""MRtrix3 from a benchmark: the SH basis, ``sh2amp`` and ``tckgen`` runs, and comparing tractograms.

Facts this module relies on (each checked by ``bench_vs_mrtrix.py`` or its test):

- MRtrix3's SH basis is DIPY's non-legacy ``tournier07``; DIPY documents
  ``convert_sh_descoteaux_tournier`` as the exact map from the *legacy* ``descoteaux07``
  basis to it, so difftract's non-legacy coefficients go through ``convert_sh_to_legacy``
  first (both maps only permute and re-sign coefficients: no rounding beyond float32
  storage);
- MRtrix reads SH directions in scanner space; difftract's coefficients are in the
  data-array frame. For an affine whose 3x3 part is a positive diagonal (the phantoms')
  the two frames agree; the benchmark samples both to prove it for its inputs;
- ``tckgen -seed_grid_per_voxel MASK N`` seeds the points ``voxel + (i + 0.5) / N - 0.5``
  per axis, DIPY's ``seeds_from_mask`` and difftract's ``grid_seeds`` grid;
  ``-output_seeds`` writes, per kept streamline, its index and its seed (scanner mm).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from difftract.eval.overlap import density_map, dice

INSTALL_HINT = "install mrtrix3: apt-get install mrtrix3"
MDF_POINTS = 20   # points per streamline for the MDF (QuickBundles' usual resampling)


def mrtrix_tools() -> dict[str, str] | None:
    """Paths of ``tckgen`` and ``sh2amp``, or None when either is missing."""
    tools = {name: shutil.which(name) for name in ("tckgen", "sh2amp")}
    return tools if all(tools.values()) else None


# ---------------------------------------------------------------------------------------- basis
def to_mrtrix_basis(coeffs: np.ndarray) -> np.ndarray:
    """Non-legacy descoteaux07 coefficients (last axis) in MRtrix3's basis (non-legacy tournier07)."""
    from dipy.reconst.shm import convert_sh_descoteaux_tournier, convert_sh_to_legacy

    with warnings.catch_warnings():   # DIPY warns about the legacy basis it is asked to convert through
        warnings.simplefilter("ignore")
        legacy = convert_sh_to_legacy(np.asarray(coeffs, dtype=np.float64), "descoteaux07")
        return convert_sh_descoteaux_tournier(legacy)


def sh2amp(fod_path: Path, directions: np.ndarray, workdir: Path) -> np.ndarray:
    """MRtrix's amplitudes ``(X, Y, Z, D)`` of the SH image at unit ``directions`` (scanner space)."""
    dirs, out = workdir / "sample_dirs.txt", workdir / "sample_amp.nii"
    np.savetxt(dirs, directions)
    subprocess.run(["sh2amp", "-force", "-quiet", str(fod_path), str(dirs), str(out)], check=True)
    return np.asarray(nib.load(out).dataobj, dtype=np.float64)


def sampled_difference(coeffs: np.ndarray, wm: np.ndarray, fod_mrtrix: Path, workdir: Path) -> dict:
    """Both fODFs sampled at 64 directions in every WM voxel: max difference / max amplitude.

    difftract's non-legacy descoteaux07 ``coeffs`` are evaluated here, the converted file
    by ``sh2amp``: a wrong basis or a frame flip shows as a difference of order 1.
    """
    from difftract.reconst.sh import sh_basis

    dirs = fibonacci_directions(64)
    ours = coeffs[wm] @ sh_basis(dirs, 8, legacy=False)[0].T
    theirs = sh2amp(fod_mrtrix, dirs, workdir)[wm]
    return {"directions": len(dirs), "voxels": int(wm.sum()),
            "max_rel_diff": float(np.abs(ours - theirs).max() / np.abs(ours).max())}


def amplitude_cutoff(coeffs: np.ndarray, wm: np.ndarray, relative: float) -> float:
    """MRtrix's absolute ``-cutoff`` standing for a relative threshold: ``relative`` x the median
    over WM voxels of the voxel's largest amplitude (on DIPY's default sphere)."""
    from difftract.reconst.peaks import default_sphere
    from difftract.reconst.sh import sh_basis

    B, _ = sh_basis(np.asarray(default_sphere().vertices), 8, legacy=False)
    return float(relative * np.median((coeffs[wm] @ B.T).max(axis=1)))


def fibonacci_directions(n: int) -> np.ndarray:
    """``n`` unit vectors spread over the sphere (a Fibonacci lattice): sampling points, not a fit."""
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    phi = np.pi * (1 + 5 ** 0.5) * i
    r = np.sqrt(1 - z ** 2)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


# ---------------------------------------------------------------------------------------- seeds
def subsample_mask(mask: np.ndarray, max_voxels: int | None) -> np.ndarray:
    """Every k-th voxel of ``mask`` (C order) with k the smallest giving at most ``max_voxels``."""
    idx = np.argwhere(mask)
    k = 1 if max_voxels is None or len(idx) <= max_voxels else -(-len(idx) // max_voxels)
    out = np.zeros(mask.shape, dtype=bool)
    out[tuple(idx[::k].T)] = True
    return out


def to_world(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return points @ affine[:3, :3].T + affine[:3, 3]


def to_voxel(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    inv = np.linalg.inv(affine)
    return points @ inv[:3, :3].T + inv[:3, 3]


def seed_keys(world: np.ndarray) -> list[tuple]:
    """Seed points (mm) as hashable keys: MRtrix prints them to ~6 digits, so round to 1 micron."""
    return [tuple(k) for k in np.round(np.asarray(world, dtype=np.float64), 3)]


def grid_check(reported_world: np.ndarray, tried: int, grid_world: np.ndarray) -> dict:
    """tckgen's reported seeds (``-output_seeds``) against our grid: every one must be a grid point."""
    ours = set(seed_keys(grid_world))
    theirs = seed_keys(reported_world)
    return {"grid_seeds": len(ours), "tckgen_seeds_tried": tried, "tckgen_seeds_reported": len(theirs),
            "reported_not_on_grid": sum(k not in ours for k in theirs)}


# ---------------------------------------------------------------------------------------- tckgen
@dataclass(frozen=True)
class TckgenSettings:
    """The tckgen options the benchmark matches to difftract's and DIPY's trackers."""

    step_mm: float
    angle_deg: float
    min_len_mm: float
    max_len_mm: float
    cutoff: float          # absolute fODF amplitude (MRtrix's -cutoff)
    threads: int


@dataclass
class TckgenRun:
    seconds: float                 # tckgen's whole run: reading the fODF, seeding, tracking, writing
    seeds: int                     # seeds tried (the grid's size, from the tck header)
    streamlines: list[np.ndarray]  # voxel coordinates
    seed_world: np.ndarray         # (S, 3) each streamline's seed, scanner mm


def tckgen(algorithm: str, fod_path: Path, seed_mask: Path, grid: int, stop_mask: Path, s: TckgenSettings,
           workdir: Path, affine: np.ndarray, tag: str) -> TckgenRun:
    """Run ``tckgen -algorithm ALGORITHM`` once: every grid seed tried once (``-select 0``)."""
    tck, seeds_csv = workdir / f"{tag}.tck", workdir / f"{tag}_seeds.csv"
    cmd = ["tckgen", "-force", "-quiet", "-algorithm", algorithm, str(fod_path), str(tck),
           "-seed_grid_per_voxel", str(seed_mask), str(grid), "-mask", str(stop_mask),
           "-step", f"{s.step_mm:g}", "-angle", f"{s.angle_deg:g}", "-minlength", f"{s.min_len_mm:g}",
           "-maxlength", f"{s.max_len_mm:g}", "-cutoff", f"{s.cutoff:.6g}", "-select", "0",
           "-nthreads", str(s.threads), "-output_seeds", str(seeds_csv)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    tractogram = nib.streamlines.load(tck)
    streamlines = [to_voxel(np.asarray(x, dtype=np.float64), affine) for x in tractogram.streamlines]
    seeds = int(tractogram.header.get("max_num_seeds", -1))
    table = np.loadtxt(seeds_csv, delimiter=",", comments="#", usecols=(0, 2, 3, 4), ndmin=2)
    seed_world = np.full((len(streamlines), 3), np.nan)
    seed_world[table[:, 0].astype(int)] = table[:, 1:]
    return TckgenRun(seconds, seeds, streamlines, seed_world)


# ---------------------------------------------------------------------------------------- comparing
def mdf_pairs(a: list[np.ndarray], b: list[np.ndarray], n: int = MDF_POINTS) -> np.ndarray:
    """QuickBundles' minimum average direct-flip distance of each pair ``a[i]``, ``b[i]`` (mm),
    both resampled to ``n`` points equally spaced along their length (DIPY's ``set_number_of_points``)."""
    from dipy.tracking.streamline import set_number_of_points

    if not len(a):
        return np.zeros(0)
    ra = np.asarray(set_number_of_points([np.asarray(x, np.float64) for x in a], n))
    rb = np.asarray(set_number_of_points([np.asarray(x, np.float64) for x in b], n))
    direct = np.linalg.norm(ra - rb, axis=2).mean(axis=1)
    flipped = np.linalg.norm(ra - rb[:, ::-1], axis=2).mean(axis=1)
    return np.minimum(direct, flipped)


def mdf(a: np.ndarray, b: np.ndarray, n: int = MDF_POINTS) -> float:
    """:func:`mdf_pairs` of one pair."""
    return float(mdf_pairs([a], [b], n)[0])


def hausdorff(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric Hausdorff distance between the two polylines' points (mm): the paper's measure."""
    from scipy.spatial.distance import directed_hausdorff

    return float(max(directed_hausdorff(a, b)[0], directed_hausdorff(b, a)[0]))


def seed_orientation(streamline: np.ndarray, seed) -> np.ndarray:
    """The unit orientation of a streamline at its point nearest ``seed`` (central difference)."""
    i = int(np.argmin(np.linalg.norm(streamline - np.asarray(seed), axis=1)))
    d = streamline[min(i + 1, len(streamline) - 1)] - streamline[max(i - 1, 0)]
    return d / max(float(np.linalg.norm(d)), 1e-12)


def paired_agreement(ours: dict, theirs: dict, thresholds_mm=(1.0, 0.5), same_start_deg: float = 20.0) -> dict:
    """MDF (mm) of the streamlines two trackers grew from the same seed point (keys: seed points, mm).

    Streamlines in mm (world). Only seeds with a streamline from both count; the counts of
    the others are given so a tracker that drops seeds cannot look better by it. The pairs
    that left the seed along the same orientation (within ``same_start_deg``) are also
    scored alone: where two peaks cross, trackers that pick the seed's first peak by
    different rules follow different bundles, which no step rule can reconcile. Beside
    the MDF, the fraction of pairs whose symmetric Hausdorff distance (over the
    streamlines' points, 1 mm apart) is < 1 mm: the measure of the differentiable-
    propagator paper (arXiv 2511.14807), stricter than the MDF (a worst point, not a mean).
    """
    common = sorted(set(ours) & set(theirs))
    d = mdf_pairs([ours[k] for k in common], [theirs[k] for k in common])
    h = np.array([hausdorff(ours[k], theirs[k]) for k in common])
    cos = np.array([abs(seed_orientation(ours[k], k) @ seed_orientation(theirs[k], k)) for k in common])
    same = cos >= np.cos(np.radians(same_start_deg))
    out = {"paired": len(common), "only_ours": len(set(ours) - set(theirs)),
           "only_theirs": len(set(theirs) - set(ours)),
           "median_mdf_mm": float(np.median(d)) if len(d) else None,
           "same_start": float(np.mean(same)) if len(d) else None}
    for t in thresholds_mm:
        out[f"within_{t:g}mm"] = float(np.mean(d <= t)) if len(d) else None
        out[f"within_{t:g}mm_same_start"] = float(np.mean(d[same] <= t)) if same.any() else None
    out["hausdorff_within_1mm"] = float(np.mean(h < 1.0)) if len(h) else None
    out["hausdorff_within_1mm_same_start"] = float(np.mean(h[same] < 1.0)) if same.any() else None
    return out


def agreement(ours, theirs, affine: np.ndarray, shape) -> dict:
    """Paired-seed MDF (mm) and the density Dice of two runs (``streamlines`` in voxels, ``seed_world``)."""
    def by_seed(run) -> dict:
        return dict(zip(seed_keys(run.seed_world), (to_world(x, affine) for x in run.streamlines)))

    out = paired_agreement(by_seed(ours), by_seed(theirs))
    out["density_dice"] = dice(density_map(ours.streamlines, shape), density_map(theirs.streamlines, shape))   # voxels traversed
    return out


# ---------------------------------------------------------------------------------------- load
@contextmanager
def busy_cores(n: int | None = None):
    """One spinning Python process per core (``os.cpu_count()`` by default), ended on exit."""
    procs = []
    try:
        for _ in range(n or os.cpu_count() or 1):
            procs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
        time.sleep(0.5)    # let them reach the scheduler before anything is timed
        yield len(procs)
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def loaded_pass(runners: dict, seeds: np.ndarray, mask_path: Path, repeats: int) -> dict:
    """Each tracker quiet, then with every core busy, ``repeats`` times in turn, on the same seeds.

    ``runners`` maps a name to ``(seeds, seed mask path, tag) -> run`` (with ``.seconds``). The machine is shared, so a "quiet" run may meet other work: the fastest of the quiet
    runs and the fastest of the loaded runs are compared (slowdown = loaded / quiet).
    """
    out = {"seeds": len(seeds), "repeats": repeats}
    for name, run in runners.items():
        quiet, loaded, loads = [], [], []
        for _ in range(repeats):
            loads.append(load_average())
            quiet.append(run(seeds, mask_path, "loaded_quiet").seconds)
            with busy_cores() as n_busy:
                loaded.append(run(seeds, mask_path, "loaded").seconds)
        slowdown = min(loaded) / min(quiet)
        out[name] = {"quiet_s": quiet, "loaded_s": loaded, "slowdown": slowdown, "busy_processes": n_busy,
                     "load_before": loads}
        print(f"  {name:10} quiet {min(quiet):8.2f} s, with {n_busy} busy processes {min(loaded):8.2f} s "
              f"(fastest of {repeats}): slowdown {slowdown:5.2f}x (load before: {loads[0]})", flush=True)
    return out


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def workdir(path: str | None):
    """``path`` (created, kept) or a temporary directory removed at the end."""
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        return _kept(Path(path))
    return tempfile.TemporaryDirectory(prefix="bench_vs_mrtrix_")


@contextmanager
def _kept(path: Path):
    yield str(path)
