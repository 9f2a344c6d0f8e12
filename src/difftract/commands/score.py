"""``difftract score``: Tractometer scores of a tractogram against a phantom's ground truth."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """\
The scores are those of scilpy 2.3.0's scil_tractogram_segment_with_ROI_and_score with
--compute_ic --unique on the same files (same keys in --json): VS/IC/NC counts and ratios,
VB (bundles with at least one valid streamline), IB, and per bundle TP/FP/FN voxels,
OL = TP/|GT|, OR_pct_vs = FP/|recovered|, OR_pct_gt = FP/|GT|, f1 (Dice), endpoint counts.

examples:
  difftract score tracks.trx --phantom phantom
  difftract score tracks.tck --phantom phantom/gt/scoring.json --json metrics.json
"""


def add_parser(sub) -> None:
    p = sub.add_parser("score", help="Tractometer scores (VS/IC/NC, VB, OL/OR/F1) against a phantom",
                       description="Score a tractogram with the Tractometer against ground-truth bundles: a "
                                   "phantom directory, its gt/ folder, or a scilpy-style scoring.json.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tractogram", type=Path, metavar="TRACTO", help=".trk, .tck or .trx file")
    p.add_argument("--phantom", type=Path, required=True, metavar="DIR",
                   help="phantom directory (or its gt/scoring.json)")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the scores as JSON")
    p.add_argument("--reference", type=Path, metavar="IMG",
                   help="grid image for .tck files (default: the phantom's mask, or a ROI of the configuration)")
    p.add_argument("--force", action="store_true", help="overwrite --json if it exists")
    p.set_defaults(func=cmd_score)


def cmd_score(args: argparse.Namespace) -> int:
    from ..pipeline import Console, score_tractogram

    score_tractogram(args.tractogram, args.phantom, args.json, reference=args.reference,
                     console=Console(quiet=args.quiet), force=args.force)
    return 0
