"""``difftract score``: Tractometer scores of a tractogram against a phantom's ground truth."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from ..errors import InputError

log = logging.getLogger("difftract")

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
    from ..eval.tractometer import format_table, load_scoring, score
    from ..eval.traversal import count_off_grid
    from ..io.atomic import check_outputs
    from ..io.sidecar import provenance, write_json
    from ..io.tractogram import load_tractogram

    if args.json is not None:
        check_outputs([args.json], args.force, inputs=[args.tractogram])
    config = load_scoring(args.phantom)
    reference = args.reference
    if reference is None:
        mask = config.path.parent.parent / "mask.nii.gz"
        reference = mask if mask.is_file() else config.reference
    start = time.perf_counter()
    tractogram = load_tractogram(args.tractogram, reference=reference)
    if tuple(tractogram.dimensions) != config.shape or not np.allclose(tractogram.affine, config.affine, atol=1e-4):
        raise InputError(args.tractogram, f"is on grid {tuple(tractogram.dimensions)} but the ground truth of "
                                          f"{config.path} is on {config.shape} (or their affines differ)")
    outside = count_off_grid(tractogram.streamlines, config.shape)
    if outside:
        log.warning("%d streamline(s) have points off the grid; their off-grid parts are ignored and their ends "
                    "take the nearest voxel (scilpy refuses such tractograms)", outside)
    result = score(tractogram.streamlines, config)
    seconds = time.perf_counter() - start
    print(f"{args.tractogram} against {config.path} ({seconds:.1f} s)")
    print(format_table(result))
    if args.json is not None:
        record = {**result.scores, "tractogram_filename": str(args.tractogram),
                  "provenance": provenance("score", {"mode": "unique, compute_ic (scilpy 2.3.0 semantics)"},
                                           inputs=[args.tractogram, config.path])}
        write_json(args.json, record, force=args.force)
    return 0
