"""The ``difftract`` command line: a thin layer over the library.

Every command validates its inputs before doing work, refuses to overwrite outputs
without ``--force``, writes atomically, and turns any :class:`DifftractError` into one
line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import warnings
from pathlib import Path

import numpy as np

from . import __version__
from .commands import cluster, cohort, connectome, fit, run, score, track, train
from .phantom.presets import PRESETS
from .errors import ConfigError, DifftractError

log = logging.getLogger("difftract")

EPILOG_SIMULATE = """\
outputs (in OUT):
  dwi.nii.gz dwi.bval dwi.bvec   the simulated scan (FSL gradient convention)
  mask.nii.gz wm.nii.gz          brain (tissue) mask and white-matter (all bundles) mask
  gt/bundles/NAME.trk            ground-truth streamlines per bundle
  gt/masks/NAME.nii.gz           ground-truth bundle masks
  gt/rois/NAME_{head,tail}.nii.gz  endpoint regions
  gt/scoring.json                Tractometer configuration (scilpy's keys)
  gt/fractions.nii.gz gt/peaks.nii.gz  per-voxel fibre fractions and directions
  tractogram.trk                 all ground-truth streamlines (bundle index per streamline)
  dwi.json tractogram.json       provenance sidecars; qc_phantom.png a QC picture

examples:
  difftract simulate phantom --preset fibercup --seed 0
  difftract simulate xing --preset crossing --angles 60 --snr 30 --bvals 1000,2000 --ndirs 30,60
  difftract simulate train01 --preset random --n-bundles 8 --seed 1
  difftract simulate train02 --preset random --randomize --seed 2   (tissue and acquisition drawn too)
  difftract simulate brain --preset brain --voxel-size 2   (whole brain, MNI152 grid; ~1 min)
  difftract simulate subj07 --preset brain-random --seed 7 --voxel-size 2.5
"""


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="difftract",
        description="Deep-learning diffusion-MRI tractography: from a DWI (NIfTI + FSL bval/bvec + mask) "
                    "to a tractogram, with ground-truth phantoms to measure every step.",
        epilog="Run 'difftract COMMAND --help' for a command's inputs, outputs and defaults.")
    parser.add_argument("--version", action="version", version=f"difftract {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    sim = sub.add_parser(
        "simulate", help="simulate a ground-truth phantom (DWI, masks, bundles, ROIs, streamlines)",
        description="Simulate a diffusion phantom with known fibres: each bundle is a tube around a smooth "
                    "centreline; the signal mixes stick + zeppelin fibre populations (partial volume at tube "
                    "borders, sharing in crossings) with isotropic background tissue, a smooth S0 field and "
                    "Rician noise. The same --seed gives identical arrays. --randomize draws the tissue (per bundle "
                    "and voxel) and the acquisition (shells, directions, b0s, SNR, coils, bias, voxel size) from the "
                    "seed too, and records the draw in dwi.json (see docs/phantoms.md).",
        epilog=EPILOG_SIMULATE, formatter_class=argparse.RawDescriptionHelpFormatter)
    sim.add_argument("out", type=Path, metavar="OUT", help="output directory (must not exist unless --force)")
    sim.add_argument("--preset", choices=PRESETS,
                     default="fibercup",
                     help="geometry: FiberCup-like slab, 2-3 straight crossing bundles, random 3D bundles, 32 "
                          "named bundles of a whole brain on the MNI152 template, or random bundles between "
                          "grey-matter regions through the MNI152 white matter, new for every seed "
                          "(default: %(default)s)")
    sim.add_argument("--snr", type=float, default=None,
                     help="b0 SNR in fibre tissue (Rician noise); 0 for no noise (default: 20; drawn with --randomize)")
    sim.add_argument("--bvals", type=_floats, default=None, metavar="B[,B...]",
                     help="shell b-values in s/mm^2 (default: 1000)")
    sim.add_argument("--ndirs", type=_ints, default=None, metavar="N[,N...]",
                     help="directions per shell, one number for all shells or one per shell (default: 32)")
    sim.add_argument("--nb0", type=int, default=None, help="number of b0 volumes (default: 2)")
    sim.add_argument("--randomize", action="store_true",
                     help="draw tissue and acquisition from the seed (instead of --bvals/--ndirs/--nb0/--snr; "
                          "--scheme and --snr 0 are kept)")
    sim.add_argument("--scheme", nargs=2, type=Path, metavar=("BVAL", "BVEC"),
                     help="use this FSL gradient scheme instead of --bvals/--ndirs/--nb0")
    sim.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    sim.add_argument("--angles", type=_floats, default=(90.0,), metavar="A[,A]",
                     help="crossing preset: angles of bundles 2 (and 3) to bundle 1, degrees (default: 90)")
    sim.add_argument("--n-bundles", type=int, default=None,
                     help="random presets: number of bundles (default: 6 for random, 12-30 drawn from the seed "
                          "for brain-random)")
    sim.add_argument("--streamlines-per-bundle", type=int, default=None,
                     help="ground-truth streamlines per bundle (default: preset's, 200/100/150/300)")
    sim.add_argument("--voxel-size", type=float, default=None, metavar="MM",
                     help="voxel edge in mm, for crossing, random and the brain presets (default: 2; brain presets: 1.25-3)")
    sim.add_argument("--step-mm", type=float, default=1.0, help="ground-truth streamline step (default: 1 mm)")
    sim.add_argument("--supersample", type=int, default=3,
                     help="sub-samples per voxel edge for partial volume (default: %(default)s)")
    sim.add_argument("--radiological", action="store_true",
                     help="write a negative-determinant (LAS) affine instead of RAS")
    sim.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    sim.set_defaults(func=cmd_simulate)

    check = sub.add_parser(
        "check", help="validate a scan (DWI, bval, bvec, mask) and describe it",
        description="Load a DWI with its FSL gradient files and optional brain mask exactly as every other "
                    "command does, run all input checks (4D image, counts, bvec layout and norms, b0 present, "
                    "mask grid, NaN/Inf, readable files) and print what difftract sees. Writes nothing.",
        epilog="example:\n  difftract check dwi.nii.gz dwi.bval dwi.bvec --mask mask.nii.gz",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    check.add_argument("dwi", type=Path, metavar="DWI", help="4D NIfTI, volumes last")
    check.add_argument("bval", type=Path, metavar="BVAL", help="FSL .bval file")
    check.add_argument("bvec", type=Path, metavar="BVEC", help="FSL .bvec file (3 x N)")
    check.add_argument("--mask", type=Path, metavar="M", help="3D brain mask on the DWI grid")
    check.add_argument("--zero-nonfinite", action="store_true", help="set NaN/Inf voxels to 0 instead of refusing")
    check.set_defaults(func=cmd_check)

    run.add_parser(sub)
    cohort.add_parser(sub)
    fit.add_parser(sub)
    track.add_parser(sub)
    score.add_parser(sub)
    cluster.add_parser(sub)
    train.add_parser(sub)
    connectome.add_parser(sub)

    demo = sub.add_parser(
        "demo", help="run the main job on the built-in fibercup phantom",
        description="Simulate the fibercup phantom, fit DTI and CSD (fODF and peaks) to it, write QC pictures, "
                    "track the fODF deterministically in the white matter, track with the shipped DDTracking model, "
                    "score both tractograms and the ground truth (the ceiling a tracker can reach) with "
                    "the Tractometer, and write a report comparing the two trackers. Everything is built in a "
                    "staging folder that becomes OUT only at the end (about a minute on 2 CPU cores).",
        epilog="outputs (in OUT):\n"
               "  phantom/               the simulated scan and its ground truth (see `difftract simulate --help`)\n"
               "  dti/ fod.nii.gz peaks.nii.gz   DTI maps, CSD fODF and peaks, with sidecars and QC pictures\n"
               "  sh.nii.gz              the signal SH DDTracking tracked\n"
               "  tracks_det.trx tracks_ddtracking.trx   the two tractograms, with their sidecars\n"
               "  scores_det.json scores_ddtracking.json scores_gt.json   Tractometer scores\n"
               "  report.html            the report (self-contained), with its report_*.png pictures\n\n"
               "example:\n  difftract demo --out demo_out", formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_argument("--out", type=Path, default=Path("difftract_demo"), help="output directory (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    demo.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    demo.set_defaults(func=cmd_demo)
    return parser


def _phantom_config(args: argparse.Namespace):
    from .io.gradients import flip_for_fsl, read_gradients
    from .phantom import PhantomConfig
    from .phantom.simulate import phantom_affine

    scheme = None
    if args.scheme is not None:  # FSL files -> the data-array frame of the phantom to be written
        bvals, bvecs = read_gradients(*args.scheme)
        scheme = (bvals, flip_for_fsl(bvecs, phantom_affine((1, 1, 1), 1.0, args.radiological)))
    if args.randomize:
        fixed = [f"--{k}" for k in ("bvals", "ndirs", "nb0") if getattr(args, k) is not None]
        fixed += ["--snr"] if args.snr not in (None, 0) else []
        if fixed:
            raise ConfigError(f"--randomize draws the scheme and the SNR; drop {', '.join(fixed)} "
                              "(--scheme keeps a given scheme, --snr 0 makes a noise-free phantom)")
    # options left out take PhantomConfig's defaults (the one place they are written)
    given = {k: getattr(args, k) for k in ("bvals", "nb0") if getattr(args, k) is not None}
    if args.snr is not None:
        given["snr"] = None if args.snr == 0 else args.snr
    if args.ndirs is not None:
        shells = len(given.get("bvals", PhantomConfig.bvals))
        if len(args.ndirs) not in (1, shells):
            raise ConfigError(f"--ndirs gives {len(args.ndirs)} counts for {shells} shells")
        given["ndirs"] = args.ndirs[0] if len(args.ndirs) == 1 else args.ndirs
    return PhantomConfig(preset=args.preset, seed=args.seed, **given, scheme=scheme, randomize=args.randomize,
                         streamlines_per_bundle=args.streamlines_per_bundle, step_mm=args.step_mm,
                         supersample=args.supersample, radiological=args.radiological,
                         angles=args.angles, n_bundles=args.n_bundles, voxel_size=args.voxel_size)


def cmd_simulate(args: argparse.Namespace) -> int:
    from .io.atomic import check_output
    from .pipeline import Console, simulate_to

    check_output(args.out, args.force, inputs=list(args.scheme or ()))
    simulate_to(_phantom_config(args), args.out, console=Console(quiet=args.quiet), force=args.force,
                inputs=list(args.scheme or ()))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from .io.dwi import load_dwi

    dwi = load_dwi(args.dwi, args.bval, args.bvec, args.mask, zero_nonfinite=args.zero_nonfinite)
    det = np.linalg.det(dwi.affine[:3, :3])
    print(f"{args.dwi}: {dwi!r}")
    print(f"  affine determinant {'positive (FSL bvec x flipped on reading)' if det > 0 else 'negative'}; "
          f"data range {float(dwi.data.min()):.4g}..{float(dwi.data.max()):.4g}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .pipeline import Console, run_demo

    run_demo(args.out, args.seed, console=Console(quiet=args.quiet), force=args.force)
    return 0


class _LevelFormatter(logging.Formatter):
    """``difftract: note: ...`` for information, ``difftract: warning: ...`` for warnings."""

    def format(self, record: logging.LogRecord) -> str:
        kind = "warning" if record.levelno >= logging.WARNING else "note"
        return f"difftract: {kind}: {record.getMessage()}"


def _setup_messages(quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LevelFormatter())
    log.handlers[:] = [handler]
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"difftract: warning: {message}", file=sys.stderr)

    warnings.showwarning = show


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is so that every staging folder is removed on the way out."""


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``difftract`` console script; returns the exit code.

    A user's mistake (bad input, an existing output, out of memory) is one line on stderr
    and exit code 2; Ctrl-C gives 130 and SIGTERM 143, both after removing what the
    command had started to write.
    """
    from .memory import is_out_of_memory

    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_messages(args.quiet)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    try:
        return args.func(args)
    except DifftractError as exc:
        print(f"difftract: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, permission denied, a file where a folder should be...
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"difftract: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except Terminated:
        print("difftract: terminated (SIGTERM); partial outputs removed", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("difftract: interrupted; partial outputs removed", file=sys.stderr)
        return 130
    except (MemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
        print(f"difftract: error: out of memory during '{args.command}': lower --chunk-size or --batch-size "
              "where the command has them, or use a machine with more memory", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
