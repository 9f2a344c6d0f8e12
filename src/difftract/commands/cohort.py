"""``difftract cohort``: parse the options and call :func:`difftract.pipeline.cohort.run_cohort`.

How subjects are found, run on Dask, skipped on a rerun and tabulated is in
:mod:`difftract.pipeline.cohort`; running one on a cluster is in ``docs/cohorts.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .run import add_run_options, run_options

EPILOG = """\
outputs (in OUT):
  NAME/                 each subject's run (what `difftract run` writes), complete or absent
  logs/NAME.log         each subject's stage lines, notes and error
  cohort.csv cohort.json  one row per subject: status (done/skipped/failed), error, streamlines, seconds,
                        peak memory, and the Tractometer's VC VB IC NC OL OR F1 when it has ground truth
  cohort.html           one row per subject: thumbnail, figures, link to its report.html

A rerun skips the subjects whose OUT/NAME is complete (unless --force) and runs the others;
a failing subject is reported and the others go on (exit status 2 when any failed).

examples:
  difftract cohort subjects/ --out cohort_det --method det --workers 4
  difftract cohort subjects.txt --out cohort_dd --scheduler tcp://10.0.0.5:8786 --threads-per-worker 4
"""


def add_parser(sub) -> None:
    p = sub.add_parser("cohort", help="run the main job on every subject of a folder or list, on Dask",
                       description="Run `difftract run` on every subject, one Dask task per subject: on a local "
                                   "cluster of worker processes, or on a running scheduler (e.g. a SLURM cluster "
                                   "through dask-jobqueue, see docs/cohorts.md). Each subject uses its own "
                                   "wm.nii.gz as stop mask when present, else its FA.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("subjects", type=Path, metavar="SUBJECTS",
                   help="a folder whose sub-folders are subjects, or a text file listing subject folders, one a line "
                        "(relative to the file's folder)")
    p.add_argument("--out", type=Path, required=True, metavar="OUT", help="the cohort's folder (created)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, metavar="N",
                       help="worker processes of a local cluster (default: one per core, at most one per subject)")
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="a running Dask scheduler: tcp://HOST:8786, or the JSON file of dask scheduler "
                            "--scheduler-file")
    p.add_argument("--threads-per-worker", type=int, metavar="T",
                   help="torch threads per subject (default: the cores divided among the subjects run at once)")
    p.add_argument("--memory-per-worker", default="auto", metavar="SIZE",
                   help="local workers' memory limit, e.g. 8GB; 0 for none (default: the machine's, shared)")
    add_run_options(p, stop_mask=False)
    p.add_argument("--force", action="store_true", help="rerun finished subjects too (their folders are replaced)")
    p.set_defaults(func=cmd_cohort)


def cmd_cohort(args: argparse.Namespace) -> int:
    from ..pipeline import Console
    from ..pipeline.cohort import run_cohort

    result = run_cohort(args.subjects, args.out, run_options(args), workers=args.workers, scheduler=args.scheduler,
                        threads_per_worker=args.threads_per_worker, memory_per_worker=args.memory_per_worker,
                        force=args.force, console=Console(quiet=args.quiet))
    for row in result.failed:
        print(f"difftract: error: {row['name']}: {row['error']}", file=sys.stderr)
    return 2 if result.failed else 0
