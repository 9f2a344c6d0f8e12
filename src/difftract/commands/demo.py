"""``difftract demo``: the main job on the built-in fibercup phantom (:func:`difftract.pipeline.run_demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
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


def cmd_demo(args: argparse.Namespace) -> int:
    from ..pipeline import Console, run_demo

    run_demo(args.out, args.seed, console=Console(quiet=args.quiet), force=args.force)
    return 0
