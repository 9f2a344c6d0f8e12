"""``difftract run``: parse the options and call :func:`difftract.pipeline.run_subject`.

What a run does (one read of the scan, DTI, the SH or CSD fit, tracking, scores, the
report, all staged and renamed into OUT at the end) is in :mod:`difftract.pipeline.run`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..models.ddtracking.defaults import DEFAULT_MODEL, SHIPPED_MODELS
from ..pipeline.run import DEFAULT_METHOD, FORMATS, METHODS
from .common import add_network_arguments

EPILOG = """\
outputs (in OUT):
  dti/                  FA, MD, AD, RD, colour FA, tensor, v1 ... (NIfTI + JSON sidecars, qc_dti.png)
  sh.nii.gz             signal SH (ddtracking only): exactly the array DDTracking tracked
  fod_ddtracking.nii.gz instead of sh.nii.gz for weights trained with --input fodf: the CSD fODF at the
                        network's lmax, which it reads times 2 sqrt(pi)
  fod.nii.gz            CSD fODF (det and prob, and ddtracking's --fodf-guide unless 0)
  stop_mask.nii.gz      where tracking went (only when made from FA, see --stop-mask)
  tracks.trx            the tractogram (--format), with tracks.json (provenance)
  scores.json           Tractometer scores (only with ground truth: SUBJECT_DIR/gt/scoring.json)
  profiles.csv          FA and MD along each ground-truth bundle, 20 nodes head -> tail (only with ground truth)
  report.html           the report (self-contained), with its report_*.png pictures

subject layouts (SUBJECT_DIR):
  dwi.nii.gz dwi.bval dwi.bvec mask.nii.gz            (what `difftract simulate` writes)
  data.nii.gz bvals bvecs nodif_brain_mask.nii.gz     (HCP names)

examples:
  difftract run sub-01 --out sub-01_tracts                       # CSD det (the default)
  difftract run sub-01 --out sub-01_dd --method ddtracking --format trk   # DDTracking, shipped weights
  difftract run 100307/T1w/Diffusion --out hcp_run --stop-mask wm.nii.gz --device cuda
"""


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="the main job: a subject directory to a tractogram, maps and a report",
                       description="Validate a subject's scan, fit DTI and SH (the signal's for DDTracking, a CSD "
                                   "fODF for det/prob), track with a classical rule (CSD det by default) or "
                                   "DDTracking (the shipped --model unless --weights), "
                                   "score against ground truth when the subject has it, and write a report.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("subject", type=Path, metavar="SUBJECT_DIR", help="the subject's folder (layouts below)")
    p.add_argument("--out", type=Path, required=True, metavar="OUT", help="output folder (created)")
    add_run_options(p, stop_mask=True)
    p.add_argument("--force", action="store_true", help="replace an existing OUT")
    p.set_defaults(func=cmd_run)


def add_run_options(p: argparse.ArgumentParser, stop_mask: bool) -> None:
    """What a run does, as options (``run`` and ``cohort`` share them); :func:`run_options` reads them back."""
    p.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD,
                   help="tracking rule (default: %(default)s, the best on unseen data in benchmarks/bench_ddtracking.py)")
    p.add_argument("--weights", type=Path, metavar="W", help="DDTracking weights (default: the shipped --model)")
    p.add_argument("--model", choices=tuple(SHIPPED_MODELS), metavar="{full,fast}",
                   help=f"the shipped DDTracking model: the paper's sizes or the small CPU one (default: {DEFAULT_MODEL})")
    p.add_argument("--fodf-guide", type=float, metavar="W",
                   help="DDTracking: move each step the fraction W of the way to the CSD fODF peak it points at "
                        "(fod.nii.gz is fitted for it); 0: the network alone (default: the weight validated for the "
                        "model, 0.3 for --model full and 0.7 for fast; 0 for other --weights)")
    add_network_arguments(p)
    p.add_argument("--format", choices=FORMATS, default="trx", help="tractogram format (default: %(default)s)")
    if stop_mask:
        p.add_argument("--stop-mask", type=Path, metavar="M",
                       help="tracking (and seeding) mask; default: SUBJECT_DIR/wm.nii.gz if present, else the brain "
                            "mask where DTI FA > --fa-threshold")
    p.add_argument("--fa-threshold", type=float, default=0.2,
                   help="FA above which a brain voxel is tracked, without a white-matter mask (default: %(default)s)")
    p.add_argument("--seeds-per-voxel", type=int, metavar="N",
                   help="random seeds per mask voxel (default: 1; DDTracking: its weights' own)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument("--chunk-size", type=int, metavar="N",
                   help="voxels fitted, and seeds tracked, at once; bounds memory (default: each stage's own, "
                        "lowered to what the free memory holds)")
    p.add_argument("--min-len-mm", type=float, default=20.0,
                   help="shortest streamline kept, mm (default: %(default)s; lower it for a small field of view)")
    p.add_argument("--shell", type=float, metavar="B",
                   help="det/prob/--fodf-guide: the shell of the CSD fit (default: the highest; for DDTracking's guide "
                        "alone, with neither --shell nor --lmax, the highest with the directions for lmax 6; a "
                        "DDTracking network of the fODF reads the highest, as it was trained)")
    p.add_argument("--lmax", type=int, metavar="N",
                   help="det/prob/--fodf-guide: the CSD fit's lmax (default: 8; for DDTracking's guide alone, with "
                        "neither --shell nor --lmax, the highest up to 8 that shell allows)")
    p.add_argument("--zero-nonfinite", action="store_true", help="set NaN/Inf voxels of the DWI to 0 instead of refusing")


def run_options(args: argparse.Namespace, stop_mask: Path | None = None):
    """The parsed options of :func:`add_run_options` as :class:`~difftract.pipeline.RunOptions`."""
    from ..pipeline import Compute, RunOptions

    return RunOptions(methods=(args.method,), weights=args.weights, model=args.model, format=args.format,
                      stop_mask=stop_mask, fa_threshold=args.fa_threshold,
                      seeds_per_voxel=args.seeds_per_voxel, seed=args.seed, min_len_mm=args.min_len_mm,
                      shell=args.shell, lmax=args.lmax, fodf_guide=args.fodf_guide, zero_nonfinite=args.zero_nonfinite,
                      matmul_dtype=args.matmul_dtype, symmetries=args.symmetries,
                      compute=Compute(device=args.device, chunk_size=args.chunk_size))


def cmd_run(args: argparse.Namespace) -> int:
    from ..pipeline import Console, run_subject

    run_subject(args.subject, args.out, run_options(args, args.stop_mask), console=Console(quiet=args.quiet), force=args.force)
    return 0
