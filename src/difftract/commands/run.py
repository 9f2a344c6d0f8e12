"""``difftract run``: one command from a subject directory to a tractogram, its maps and a report.

The steps are the commands a user would type (``fit dti``, ``fit csd`` for the classical
rules, ``track``, ``score`` when the subject has ground truth), run in this process one
after the other into a staging folder beside ``OUT``; the report is written last, and the
folder becomes ``OUT`` only when everything succeeded (an existing ``OUT`` is replaced only
with ``--force``). A failed run leaves nothing behind.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import ConfigError, InputError

log = logging.getLogger("difftract")

METHODS = ("ddtracking", "det", "prob")
EPILOG = """\
outputs (in OUT):
  dti/                  FA, MD, AD, RD, colour FA, tensor, v1 ... (NIfTI + JSON sidecars, qc_dti.png)
  sh.nii.gz             signal SH, lmax 6 (ddtracking only; the kind of input DDTracking reads)
  fod.nii.gz            CSD fODF (det and prob only)
  stop_mask.nii.gz      where tracking went (only when made from FA, see --stop-mask)
  tracks.trx            the tractogram (--format), with tracks.json (provenance)
  scores.json           Tractometer scores (only with ground truth: SUBJECT_DIR/gt/scoring.json)
  profiles.csv          FA and MD along each ground-truth bundle, 20 nodes head -> tail (only with ground truth)
  report.html           the report (self-contained), with its report_*.png pictures

subject layouts (SUBJECT_DIR):
  dwi.nii.gz dwi.bval dwi.bvec mask.nii.gz            (what `difftract simulate` writes)
  data.nii.gz bvals bvecs nodif_brain_mask.nii.gz     (HCP names)

examples:
  difftract run sub-01 --out sub-01_tracts                       # DDTracking, shipped weights
  difftract run sub-01 --out sub-01_det --method det --format trk
  difftract run 100307/T1w/Diffusion --out hcp_run --stop-mask wm.nii.gz --device cuda
"""


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="the main job: a subject directory to a tractogram, maps and a report",
                       description="Validate a subject's scan, fit DTI and SH (the signal's for DDTracking, a CSD "
                                   "fODF for det/prob), track with "
                                   "DDTracking (the shipped weights unless --weights) or a classical rule, "
                                   "score against ground truth when the subject has it, and write a report.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("subject", type=Path, metavar="SUBJECT_DIR", help="the subject's folder (layouts below)")
    p.add_argument("--out", type=Path, required=True, metavar="OUT", help="output folder (created)")
    p.add_argument("--method", choices=METHODS, default="ddtracking", help="tracking rule (default: %(default)s)")
    p.add_argument("--weights", type=Path, metavar="W", help="DDTracking weights (default: the shipped model)")
    p.add_argument("--format", choices=("trx", "trk", "tck"), default="trx", help="tractogram format "
                                                                                   "(default: %(default)s)")
    p.add_argument("--stop-mask", type=Path, metavar="M",
                   help="tracking (and seeding) mask; default: SUBJECT_DIR/wm.nii.gz if present, else the brain "
                        "mask where DTI FA > --fa-threshold")
    p.add_argument("--fa-threshold", type=float, default=0.2,
                   help="FA above which a brain voxel is tracked, without a white-matter mask (default: %(default)s)")
    p.add_argument("--seeds-per-voxel", type=int, metavar="N",
                   help="random seeds per mask voxel (default: 1 for ddtracking, 2 for det and prob)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument("--min-len-mm", type=float, default=20.0,
                   help="shortest streamline kept, mm (default: %(default)s; lower it for a small field of view)")
    p.add_argument("--shell", type=float, metavar="B",
                   help="det/prob: the shell of the CSD fit (default: the highest)")
    p.add_argument("--lmax", type=int, metavar="N", help="det/prob: the CSD fit's lmax (default: 8)")
    p.add_argument("--zero-nonfinite", action="store_true", help="set NaN/Inf voxels of the DWI to 0 instead of refusing")
    p.add_argument("--force", action="store_true", help="replace an existing OUT")
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from ..io.atomic import atomic_directory, check_output
    from ..io.dwi import subject_files

    if args.weights is not None and args.method != "ddtracking":
        raise ConfigError("--weights applies only to --method ddtracking")
    if args.method == "ddtracking" and (args.shell is not None or args.lmax is not None):
        raise ConfigError("--shell and --lmax set the CSD fit of --method det or prob; DDTracking reads the SH "
                          "(lmax 6) of the shell nearest b=1000, as it was trained; for a scheme without such a shell use "
                          "--method det or prob with --shell/--lmax")
    if args.seeds_per_voxel is not None and args.seeds_per_voxel < 1:
        raise ConfigError(f"--seeds-per-voxel must be at least 1, got {args.seeds_per_voxel}")
    if not 0.0 <= args.fa_threshold < 1.0:
        raise ConfigError(f"--fa-threshold must be in [0, 1), got {args.fa_threshold}")
    out = Path(args.out)
    files = subject_files(args.subject)
    if files[3] is None:
        raise ConfigError(f"{args.subject}: no brain mask (mask.nii.gz or nodif_brain_mask.nii.gz); run needs one")
    inputs = [p for p in (*files, args.stop_mask, args.weights) if p is not None]
    check_output(out, args.force, inputs=[*inputs, args.subject])
    _check_before_work(args, files)
    start = time.perf_counter()
    with atomic_directory(out, args.force, kind="partial") as staging, shown_as(staging, out):
        summary = _steps(args, files, staging)
    seconds = time.perf_counter() - start
    print(f"\nrun {args.method}: {summary['streamlines']:,} streamlines, mean length {summary['mean_length_mm']:.1f} mm, "
          f"{seconds:.0f} s -> {out / 'report.html'}")
    return 0


def _check_before_work(args, files) -> None:
    """Refuse bad --weights and a --stop-mask that cannot seed before any fitting (they are read again later).

    The stop mask is run's seed mask too: one on another grid, empty, or with no voxel in
    the brain mask (where the fits are made) would only fail, or give no streamline, after
    the fits.
    """
    import nibabel as nib

    from ..io.dwi import load_mask

    if args.weights is not None:
        from ..models.ddtracking.getter import load_ddtracking

        load_ddtracking(args.weights)
    if args.stop_mask is None:
        return
    try:   # the grid from the DWI's header; a DWI that cannot be read is reported by the first step
        header = nib.load(str(files[0]))
        shape, affine = tuple(header.shape[:3]), header.affine
    except Exception:
        return
    stop = load_mask(args.stop_mask, shape, affine, "stop mask")
    brain = load_mask(files[3], shape, affine)
    if not (stop & brain).any():
        raise ConfigError(f"{args.stop_mask}: the stop mask has no voxel inside the brain mask {files[3].name} "
                          f"({int(stop.sum())} voxels, all outside it), so every seed would start where nothing "
                          "is fitted; give a white-matter mask on this subject's brain")


def _steps(args, files, staging: Path) -> dict:
    from ..cli import build_parser
    from ..io.nifti import load_nifti, save_nifti

    dwi, bval, bvec, mask = files
    scan = [str(dwi), str(bval), str(bvec), "--mask", str(mask)] + (["--zero-nonfinite"] if args.zero_nonfinite else [])
    quiet = ["-q"] if args.quiet else []

    def step(*argv):
        print(f"\n$ difftract {' '.join(argv)}", flush=True)
        parsed = build_parser().parse_args(quiet + list(argv))
        parsed.func(parsed)

    step("fit", "dti", *scan, "--out-dir", str(staging / "dti"), "--device", args.device)
    stop = args.stop_mask or (args.subject / "wm.nii.gz" if (args.subject / "wm.nii.gz").is_file() else None)
    if stop is None:
        fa = load_nifti(staging / "dti" / "fa.nii.gz", "FA")
        brain = np.asarray(load_nifti(mask, "mask").dataobj) > 0
        tracked = brain & (np.nan_to_num(np.asarray(fa.dataobj)) > args.fa_threshold)
        if not tracked.any():
            raise ConfigError(f"{args.subject}: no brain voxel has FA > {args.fa_threshold}; lower --fa-threshold "
                              "or give --stop-mask")
        stop = save_nifti(staging / "stop_mask.nii.gz", tracked, fa.affine,
                          sidecar={"description": f"brain mask & DTI FA > {args.fa_threshold}"})
    tracks = staging / f"tracks.{args.format}"
    seeds = args.seeds_per_voxel or (1 if args.method == "ddtracking" else 2)
    track = ["track", *scan, "--stop-mask", str(stop), "--method", args.method, "--seeds-per-voxel", str(seeds),
             "--min-len-mm", f"{args.min_len_mm:g}",
             "--seed", str(args.seed), "--device", args.device, "--out", str(tracks)]
    if args.method == "ddtracking":
        step("fit", "sh", *scan, "--out", str(staging / "sh.nii.gz"), "--lmax", "6", "--device", args.device)
        track += ["--weights", str(args.weights)] if args.weights else []
    else:
        csd = (["--shell", f"{args.shell:g}"] if args.shell is not None else []) + \
            (["--lmax", str(args.lmax)] if args.lmax is not None else [])
        step("fit", "csd", *scan, *csd, "--out", str(staging / "fod.nii.gz"), "--device", args.device)
        track += ["--sh", str(staging / "fod.nii.gz")]
    step(*track)
    _check_tracked(tracks, args, stop, staging)
    truth = args.subject / "gt" / "scoring.json"
    if truth.is_file():
        step("score", str(tracks), "--phantom", str(args.subject), "--json", str(staging / "scores.json"))
    return report(staging, [(args.method, tracks)], title=f"difftract run: {args.subject.name} ({args.method})",
                  params={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"},
                  mask=mask, truth=truth if truth.is_file() else None)


def _check_tracked(tracks: Path, args, stop: Path, staging: Path) -> None:
    """Refuse to report an empty tractogram: say where the seeds were and what stopped them."""
    from ..io.sidecar import sidecar_path

    record = _json(sidecar_path(tracks)) or {}
    if record.get("n_streamlines", 1) > 0:
        return
    seeds, min_len = record.get("n_seeds", 0), record.get("params", {}).get("min_len_mm", 20.0)
    if Path(stop).parent == staging:   # made from FA: name it in words, not by its staging path
        raise ConfigError(f"{args.subject}: no streamline: all {seeds:,} seeds in the brain voxels with FA > "
                          f"{args.fa_threshold:g} stopped before {min_len:g} mm; lower --fa-threshold, give a "
                          "white-matter --stop-mask, or lower --min-len-mm for a small field of view")
    raise InputError(stop, f"no streamline: all {seeds:,} seeds in this stop mask stopped before {min_len:g} mm "
                           "(the mask is too small or not white matter); give a white-matter --stop-mask, or lower "
                           "--min-len-mm for a small field of view")


def report(directory: Path, tractograms: list[tuple[str, Path]], title: str, params: dict,
           mask: Path | None = None, truth: Path | None = None) -> dict:
    """Write ``directory/report.html`` from the run's files; returns the first method's summary.

    ``mask`` is the brain mask outlined on the colour FA (default: where FA was fitted).
    ``truth`` is the ground truth's ``scoring.json``, if any: with it, each method's FA and MD
    profiles along the ground-truth bundles go into the report and ``directory/profiles.csv``.
    """
    from ..io.nifti import load_nifti
    from ..io.tractogram import load_tractogram
    from ..viz.report import MethodResult, write_report

    rgb = np.asarray(load_nifti(directory / "dti" / "rgb.nii.gz", "colour FA").dataobj)
    fa_img = load_nifti(directory / "dti" / "fa.nii.gz", "FA")
    mask = np.asarray((load_nifti(mask, "mask") if mask is not None else fa_img).dataobj) > 0
    voxel = float(np.linalg.norm(fa_img.affine[:3, 0]))
    results = []
    for name, path in tractograms:
        tract = load_tractogram(path, reference=(fa_img.affine, fa_img.shape))
        sidecar = _json(path.with_suffix(".json"))
        scores_path = directory / ("scores.json" if len(tractograms) == 1 else f"scores_{name}.json")
        results.append(MethodResult(name, list(tract.streamlines), voxel, _json(scores_path),
                                    (sidecar or {}).get("seconds"), (sidecar or {}).get("params", {}), sidecar))
    if truth is not None:
        _tractometry(directory, results, fa_img, truth, [p for _, p in tractograms])
    write_report(directory, title=title, rgb=rgb, mask=mask, results=results, params=params,
                 provenance={"dti": _json(directory / "dti" / "fa.json")}, force=True)
    first = results[0]
    return {"streamlines": len(first.streamlines), "mean_length_mm": first.mean_length_mm}


def _tractometry(directory: Path, results: list, fa_img, truth: Path, tractograms: list[Path]) -> None:
    """With ground truth on the FA's grid: profiles on each result, and ``directory/profiles.csv``."""
    from ..eval.profiles import N_POINTS, tractometry, truth_profiles, write_profiles_csv
    from ..eval.tractometer import load_scoring
    from ..io.nifti import load_nifti
    from ..io.sidecar import provenance

    config = load_scoring(truth)
    if config.shape != tuple(fa_img.shape[:3]) or not np.allclose(config.affine, fa_img.affine, atol=1e-4):
        log.warning("%s: the ground truth is not on the DTI maps' grid; no tractometry profiles", truth)
        return
    fa = np.asarray(fa_img.dataobj, dtype=np.float64)
    md = np.asarray(load_nifti(directory / "dti" / "md.nii.gz", "MD").dataobj, dtype=np.float64)
    reference = truth_profiles(config, fa, md, N_POINTS)
    for r in results:
        r.profiles = tractometry(r.streamlines, config, fa, md, N_POINTS, reference)
    record = provenance("tractometry", {"n_points": N_POINTS, "orientation": "head ROI -> tail ROI",
                                        "weights": "gaussian (DIPY); plain mean under 4 streamlines or non-finite"},
                        inputs=[*tractograms, directory / "dti" / "fa.nii.gz", directory / "dti" / "md.nii.gz", truth])
    write_profiles_csv(directory / "profiles.csv", {r.name: r.profiles for r in results}, force=True,
                       provenance=record)


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


class _ShownAs(io.TextIOBase):
    """A text stream that prints the staging folder's path as the final one."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        from ..io.sidecar import shown_path

        self.stream.write(shown_path(text))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


@contextlib.contextmanager
def shown_as(staging: Path, out: Path):
    """Within this context, what the steps print and record names ``out`` where they wrote into ``staging``."""
    from ..io.sidecar import final_paths

    with final_paths(staging, out), contextlib.redirect_stdout(_ShownAs(sys.stdout)):
        yield
