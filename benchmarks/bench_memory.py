"""Peak memory of whole-brain commands on an HCP-sized scan (bounded memory, issue 21).

Run: ``.venv/bin/python benchmarks/bench_memory.py`` (the full size took about an hour on 2
shared cores: ``fit csd`` 17 minutes, tracking 1-3 seeds/s, so keep ``--max-seeds`` small;
``--shape 40,48,40 --volumes 96`` runs in two minutes). Prints a table, then one JSON object as
the last line.

The scan is synthetic and written volume by volume (the writer never holds it whole): a
145 x 174 x 145 grid at 1.25 mm, 288 volumes (18 b0 + 90 directions at each of b = 1000,
2000, 3000, as the HCP's), int16 in a ``.nii.gz``; a brain-shaped ellipsoid mask of about
900,000 voxels and a white-matter mask inside it (an inner ellipsoid, about 380,000
voxels). The signal comes from a smooth tensor field (prolate tensors, FA about 0.8, along
a direction that turns slowly through the white matter; isotropic elsewhere in the brain;
low noise everywhere, background included), so the fits and the tracker work as on tissue.

Stages (``--stages``), each a separate ``difftract`` process whose peak RSS (VmHWM) and
wall time are measured:

- ``check``: ``difftract check`` (load and validate, nothing else);
- ``fit-dti``: ``difftract fit dti`` (WLS);
- ``fit-csd``: ``difftract fit csd --lmax 8`` (auto response; the command also finds the
  peaks it draws in its QC picture);
- ``track``: ``difftract track --method det --sh FOD --stop-mask wm --seeds-per-voxel 1``
  in chunks of ``--track-chunk`` seeds, twice: seeded in one chunk's worth of white-matter
  voxels, then in ``--max-seeds`` (all of them when 0): past one chunk the resident memory
  does not grow with the seed count (only the tractogram file does). Its peak is set while
  the scan and the fODF are loaded, before the first seed moves;
- ``dipy-dti``, ``dipy-csd``: DIPY's own calls on the same files, for the ratio: ``load_nifti``
  (the whole scan, in its on-disk int16) and ``TensorModel(gtab).fit(data, mask)``; the same load and
  ``ConstrainedSphericalDeconvModel(gtab, response, sh_order_max=8).fit`` on every k-th
  mask voxel (``--dipy-csd-voxels``; DIPY fits a voxel at a time, its memory is the loaded
  scan's) with ``auto_response_ssst``;
- ``run-brain`` (not in the default stages: minutes to hours): ``difftract simulate
  --preset brain`` then ``difftract run PHANTOM --method det``;
- ``track-ddtracking`` (not in the default stages): ``difftract track --method ddtracking
  --model M --sh FOD --stop-mask wm --seeds-per-voxel 1`` (``--dd-model``, default ``fast``)
  in ``--max-seeds`` white-matter voxels (all when 0), chunked as ``track`` chunks by
  default, guided by the fODF of ``fit-csd``: the learned tracker at a real brain's size;
  then ``--method det`` on the same seeds and chunks, the reference its ratios are to.

Targets (``--check``): peak RSS of ``fit csd`` and ``track`` at most 6 GB on the HCP-sized
scan (issue 21); the other stages are reported. With a smaller ``--shape`` the targets are
still checked (they then hold trivially).
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from _check import Target, parse_args
from _cli import run_cli

TARGETS = [
    Target("fit_csd_peak_gb", "<=", 6.0, "issue 21: peak RSS <= 6 GB for an HCP-sized scan"),
    Target("track_peak_gb", "<=", 6.0, "issue 21: peak RSS <= 6 GB for an HCP-sized scan"),
    Target("track_ddtracking_peak_gb", "<=", 6.0, "issue 21's bound, for DDTracking (stage track-ddtracking)"),
    Target("check_peak_gb", "measured", None, "issue 21 (reported)"),
    Target("fit_dti_peak_gb", "measured", None, "issue 21 (reported)"),
]
STAGES = ("check", "fit-dti", "fit-csd", "track", "dipy-dti", "dipy-csd", "run-brain", "track-ddtracking")
DEFAULT_STAGES = "check,fit-dti,fit-csd,track,dipy-dti,dipy-csd"
SHELLS = (1000.0, 2000.0, 3000.0)
VOXEL_MM = 1.25


# --- the synthetic scan ------------------------------------------------------------------------------

def fibonacci_sphere(n: int, rotation: float = 0.0) -> np.ndarray:
    """``n`` nearly uniform unit vectors on a hemisphere-free sphere (antipodes are the same for diffusion)."""
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    phi = np.pi * (1 + 5 ** 0.5) * i + rotation
    r = np.sqrt(1 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def scheme(n_volumes: int) -> tuple[np.ndarray, np.ndarray]:
    """b-values and unit vectors: 1 b0 in 16 (18 of 288), the rest split over three shells."""
    nb0 = max(1, n_volumes // 16)
    per = (n_volumes - nb0) // len(SHELLS)
    nb0 = n_volumes - per * len(SHELLS)
    bvals, bvecs = [], []
    for k, b in enumerate(SHELLS):
        bvals += [b] * per
        bvecs.append(fibonacci_sphere(per, rotation=0.7 * k))
    bvals, bvecs = np.array(bvals), np.concatenate(bvecs)
    b0_at = np.linspace(0, n_volumes - 1, nb0).round().astype(int)
    out_b, out_v = np.zeros(n_volumes), np.zeros((n_volumes, 3))
    dw = np.setdiff1d(np.arange(n_volumes), b0_at)
    out_b[dw], out_v[dw] = bvals, bvecs
    return out_b, out_v


def ellipsoid(shape: tuple[int, int, int], scale: float) -> np.ndarray:
    """A brain-shaped ellipsoid: semi-axes 0.40, 0.41, 0.36 of the grid (about 900,000 voxels of the HCP grid)."""
    axes = np.array([0.40, 0.41, 0.36]) * np.array(shape) * scale
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    r2 = sum(((g - (n - 1) / 2) / a) ** 2 for g, n, a in zip(grid, shape, axes))
    return r2 <= 1.0


def fibre_field(shape: tuple[int, int, int]) -> np.ndarray:
    """Unit directions ``(X, Y, Z, 3)`` float32 that turn slowly across the grid (a smooth field)."""
    x, y, z = (np.linspace(-1, 1, n, dtype=np.float32) for n in shape)
    X, Y, Z = np.meshgrid(x, y, z, indexing="ij")
    v = np.stack([np.cos(1.5 * Y), np.sin(1.5 * Y) * np.cos(Z), 0.6 * np.sin(2 * X)], axis=-1)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def write_scan(folder: Path, shape: tuple[int, int, int], n_volumes: int, seed: int = 0) -> dict:
    """Write dwi.nii.gz (int16, volume by volume), dwi.bval, dwi.bvec, mask.nii.gz, wm.nii.gz into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    affine = np.diag([VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])
    affine[:3, 3] = -VOXEL_MM * (np.array(shape) - 1) / 2
    brain, wm = ellipsoid(shape, 1.0), ellipsoid(shape, 0.75)
    for name, m in (("mask", brain), ("wm", wm)):
        img = nib.Nifti1Image(m.astype(np.uint8), affine)
        img.set_qform(affine, 1)
        img.set_sform(affine, 1)
        nib.save(img, str(folder / f"{name}.nii.gz"))
    bvals, bvecs = scheme(n_volumes)
    np.savetxt(folder / "dwi.bval", bvals[None], fmt="%g")
    # FSL's convention: x flipped for a positive-determinant affine, so flip it here to mean the array frame
    np.savetxt(folder / "dwi.bvec", (bvecs * [-1, 1, 1]).T, fmt="%.6f")

    e1 = fibre_field(shape)
    s0 = np.where(brain, 1000.0, 80.0).astype(np.float32)
    l_par = np.where(wm, 1.7e-3, 0.8e-3).astype(np.float32)
    l_perp = np.where(wm, 0.25e-3, 0.8e-3).astype(np.float32)
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape + (n_volumes,))
    hdr.set_data_dtype(np.int16)
    hdr.set_zooms((VOXEL_MM,) * 3 + (1.0,))
    hdr.set_qform(affine, 1)
    hdr.set_sform(affine, 1)
    hdr.set_xyzt_units("mm", "sec")
    hdr["vox_offset"] = 352
    with gzip.open(folder / "dwi.nii.gz", "wb", compresslevel=1) as f:
        f.write(hdr.binaryblock + b"\x00" * 4)
        for b, g in zip(bvals, bvecs):
            cos2 = np.square(e1 @ g.astype(np.float32))
            signal = s0 * np.exp(-b * (l_perp + (l_par - l_perp) * cos2))
            signal += rng.normal(0.0, 20.0, size=shape).astype(np.float32)      # SNR 50 on b0
            f.write(np.clip(np.abs(signal).round(), 0, 32767).astype("<i2").tobytes(order="F"))
    return {"shape": list(shape), "volumes": n_volumes, "mask_voxels": int(brain.sum()), "wm_voxels": int(wm.sum()),
            "dwi_bytes": (folder / "dwi.nii.gz").stat().st_size}


def seed_mask(folder: Path, n: int, name: str, seed: int = 0) -> Path:
    """A seed mask of ``n`` white-matter voxels drawn at random (every one when ``n`` is 0)."""
    img = nib.load(str(folder / "wm.nii.gz"))
    wm = np.asarray(img.dataobj) > 0
    if 0 < n < wm.sum():
        flat = np.flatnonzero(wm)
        keep = np.random.default_rng(seed).choice(flat, n, replace=False)
        wm = np.zeros(wm.shape, bool)
        wm.flat[keep] = True
    path = folder / name
    out = nib.Nifti1Image(wm.astype(np.uint8), img.affine)
    out.set_qform(img.affine, 1)
    out.set_sform(img.affine, 1)
    nib.save(out, str(path))
    return path


# --- measuring -------------------------------------------------------------------------------------

DIPY_DTI = """
import sys
from dipy.core.gradients import gradient_table
from dipy.io.gradients import read_bvals_bvecs
from dipy.io.image import load_nifti
from dipy.reconst.dti import TensorModel
d = sys.argv[1]
data, affine = load_nifti(d + "/dwi.nii.gz")
mask, _ = load_nifti(d + "/mask.nii.gz")
bvals, bvecs = read_bvals_bvecs(d + "/dwi.bval", d + "/dwi.bvec")
TensorModel(gradient_table(bvals, bvecs=bvecs)).fit(data, mask > 0)
"""

DIPY_CSD = """
import sys, numpy as np
from dipy.core.gradients import gradient_table
from dipy.io.gradients import read_bvals_bvecs
from dipy.io.image import load_nifti
from dipy.reconst.csdeconv import ConstrainedSphericalDeconvModel, auto_response_ssst
d, n = sys.argv[1], int(sys.argv[2])
data, affine = load_nifti(d + "/dwi.nii.gz")
mask, _ = load_nifti(d + "/mask.nii.gz")
bvals, bvecs = read_bvals_bvecs(d + "/dwi.bval", d + "/dwi.bvec")
keep = (bvals < 50) | (np.abs(bvals - bvals.max()) < 50)          # the b0s and the highest shell, as difftract
gtab = gradient_table(bvals[keep], bvecs=bvecs[keep])
data = data[..., keep]
response, _ = auto_response_ssst(gtab, data, roi_radii=10, fa_thr=0.7)
sub = np.zeros(mask.shape, bool)
flat = np.flatnonzero(mask > 0)
sub.flat[flat[:: max(1, len(flat) // n)]] = True
ConstrainedSphericalDeconvModel(gtab, response, sh_order_max=8).fit(data, mask=sub)
print(int(sub.sum()))
"""


def run_python(code: str, *argv: str) -> tuple[float, float, str]:
    """Run ``code`` in a fresh interpreter: wall time (s), peak RSS (GB) and its stdout."""
    wrapped = ("import sys\ntry:\n" + "".join(f"    {line}\n" for line in code.strip().splitlines())
               + "finally:\n    peak = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
               "    print(peak.split()[1], file=sys.stderr)\n")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", wrapped, *argv], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"exited with status {proc.returncode}: {proc.stderr[-500:]}")
    return seconds, int(proc.stderr.split()[-1]) / 1024**2, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="145,174,145", help="grid X,Y,Z (default: the HCP's %(default)s)")
    parser.add_argument("--volumes", type=int, default=288, help="volumes (default: %(default)s)")
    parser.add_argument("--stages", default=DEFAULT_STAGES, help=f"comma-separated, of {', '.join(STAGES)} "
                                                                 "(default: %(default)s)")
    parser.add_argument("--max-seeds", type=int, default=0,
                        help="white-matter voxels seeded by the second track run (0, the default: all, one seed per white-matter voxel as the issue asks); "
                             "the first seeds one chunk")
    parser.add_argument("--dd-model", default="fast", choices=("fast", "full"),
                        help="DDTracking model of stage track-ddtracking (default: %(default)s)")
    parser.add_argument("--track-chunk", type=int, default=500, help="tracker chunk, seeds (default: %(default)s)")
    parser.add_argument("--dipy-csd-voxels", type=int, default=5000,
                        help="mask voxels DIPY's CSD fits (default: %(default)s; its memory is the loaded scan's)")
    parser.add_argument("--workdir", type=Path, default=None, help="where to write the scan (default: a temporary "
                                                                   "folder under /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the scan and outputs")
    args, check = parse_args(parser, "bench_memory", TARGETS)
    shape = tuple(int(s) for s in args.shape.split(","))
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = set(stages) - set(STAGES)
    if unknown:
        parser.error(f"unknown stages {sorted(unknown)}; choose from {', '.join(STAGES)}")

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_memory_", dir="/tmp"))
    figures: dict = {"stages": {}}
    try:
        start = time.perf_counter()
        scan = write_scan(work / "scan", shape, args.volumes)
        scan["write_s"] = time.perf_counter() - start
        figures["scan"] = scan
        print(f"scan {shape} x {args.volumes} int16: {scan['dwi_bytes'] / 1e9:.2f} GB gzipped, mask "
              f"{scan['mask_voxels']:,} voxels, WM {scan['wm_voxels']:,} (written in {scan['write_s']:.0f} s)",
              flush=True)
        figures["stages"] = run_stages(stages, work, args, check)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    rows = figures["stages"]
    print(f"\n{'stage':28} {'peak RSS GB':>12} {'time s':>9}  note")
    for name, r in rows.items():
        print(f"{name:28} {r['peak_gb']:12.2f} {r['seconds']:9.1f}  {r.get('note', '')}")
    for ours, theirs in (("fit-dti", "dipy-dti"), ("fit-csd", "dipy-csd")):
        if ours in rows and theirs in rows:
            figures[f"{ours}_rss_ratio_dipy"] = rows[theirs]["peak_gb"] / rows[ours]["peak_gb"]
            print(f"{theirs} / {ours} peak RSS: {figures[f'{ours}_rss_ratio_dipy']:.2f}x")
    for target, stage in (("fit_csd_peak_gb", "fit-csd"), ("track_peak_gb", "track"), ("check_peak_gb", "check"),
                          ("fit_dti_peak_gb", "fit-dti"), ("track_ddtracking_peak_gb", "track-ddtracking")):
        if stage in rows:
            check.measure(target, rows[stage]["peak_gb"])
        elif stage not in stages:
            check.skip(target, f"stage {stage} not run (--stages)")
    check.finish(figures)


def run_stages(stages: list[str], work: Path, args, check) -> dict:
    d = work / "scan"
    scan = [d / "dwi.nii.gz", d / "dwi.bval", d / "dwi.bvec", "--mask", d / "mask.nii.gz"]
    rows: dict[str, dict] = {}

    def record(name: str, seconds: float, peak: float, note: str = "") -> None:
        rows[name] = {"seconds": seconds, "peak_gb": peak, "note": note}
        print(f"  {name}: {peak:.2f} GB peak RSS, {seconds:.1f} s {note}", flush=True)

    def attempt(name: str, fn) -> None:
        try:
            fn()
        except Exception as e:                  # noqa: BLE001 - a failed stage is reported, the others still run
            print(f"  {name}: FAILED: {e}", flush=True)
            rows[name] = {"seconds": float("nan"), "peak_gb": float("nan"), "note": f"failed: {e}"[:300]}

    fod = work / "fod.nii.gz"
    if "check" in stages:
        attempt("check", lambda: record("check", *run_cli("check", *scan)))
    if "fit-dti" in stages:
        attempt("fit-dti", lambda: record("fit-dti", *run_cli("fit", "dti", *scan, "--out-dir", work / "dti",
                                                              "--force")))
    if "fit-csd" in stages or ({"track", "track-ddtracking"} & set(stages) and not fod.exists()):
        attempt("fit-csd", lambda: record("fit-csd", *run_cli("fit", "csd", *scan, "--lmax", "8", "--out", fod,
                                                              "--force")))
    if "track" in stages:
        for k, n in enumerate((args.track_chunk, args.max_seeds)):
            name = f"track ({n or 'all WM'} seeds)"
            seeds = seed_mask(d, n, f"seeds{k}.nii.gz")

            def track(name=name, seeds=seeds, k=k):
                seconds, peak = run_cli("track", *scan, "--out", work / f"track{k}.trx", "--method", "det",
                                        "--sh", fod, "--stop-mask", d / "wm.nii.gz", "--seed-mask", seeds,
                                        "--seeds-per-voxel", "1", "--chunk-size", str(args.track_chunk), "--force")
                record(name, seconds, peak, f"chunks of {args.track_chunk} seeds")
                if "track" not in rows:
                    rows["track"] = dict(rows[name])
                rows["track"]["peak_gb"] = max(rows["track"]["peak_gb"], peak)
                rows["track"]["note"] = "the larger of the two runs"
            attempt(name, track)
    if "track-ddtracking" in stages:
        def ddtracking():
            from difftract.io.tractogram import load_tractogram

            seeds = seed_mask(d, args.max_seeds, "seeds_dd.nii.gz")
            n_seeds = int(np.asarray(nib.load(str(seeds)).dataobj).sum())
            for method in ("ddtracking", "det"):          # det on the same seeds and chunks: the reference
                out = work / f"track_{method}.trx"
                extra = ["--model", args.dd_model] if method == "ddtracking" else []
                seconds, peak = run_cli("track", *scan, "--out", out, "--method", method, *extra, "--sh", fod,
                                        "--stop-mask", d / "wm.nii.gz", "--seed-mask", seeds,
                                        "--seeds-per-voxel", "1", "--force")
                n_lines = len(load_tractogram(out).streamlines)
                name = "track-ddtracking" if method == "ddtracking" else "track-ddtracking: det reference"
                what = (f"--model {args.dd_model}, guided by the fODF; the wall time includes the SH fit"
                        if method == "ddtracking" else "the same seeds and default chunks")
                record(name, seconds, peak, f"{n_lines:,} streamlines from {n_seeds:,} seeds ({what})")
            dd, det = rows["track-ddtracking"], rows["track-ddtracking: det reference"]
            print(f"  DDTracking / det in this run: peak RSS {dd['peak_gb'] / det['peak_gb']:.2f}x, "
                  f"wall time {dd['seconds'] / det['seconds']:.1f}x", flush=True)
        attempt("track-ddtracking", ddtracking)
    if "dipy-dti" in stages:
        attempt("dipy-dti", lambda: record("dipy-dti", *run_python(DIPY_DTI, str(d))[:2],
                                           "load_nifti (the int16 array as stored) + TensorModel WLS"))
    if "dipy-csd" in stages:
        def dipy_csd():
            seconds, peak, out = run_python(DIPY_CSD, str(d), str(args.dipy_csd_voxels))
            record("dipy-csd", seconds, peak, f"load + CSD lmax 8 of {out.split()[-1]} mask voxels")
        attempt("dipy-csd", dipy_csd)
    if "run-brain" in stages:
        def brain():
            seconds, peak = run_cli("simulate", work / "brain", "--preset", "brain", "--force")
            record("simulate brain", seconds, peak)
            record("run-brain", *run_cli("run", work / "brain", "--out", work / "brain_run", "--method", "det",
                                         "--force"), "difftract run --method det on the brain phantom")
        attempt("run-brain", brain)
    return rows


if __name__ == "__main__":
    main()
