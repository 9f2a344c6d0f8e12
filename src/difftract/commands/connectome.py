"""``difftract connectome``: parse the options and call :func:`difftract.pipeline.connectome.connectome_of`.

A structural connectome (node x node CSV) with MRtrix tck2connectome's semantics.
"""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """\
Semantics of MRtrix 3.0's tck2connectome (checked against it by benchmarks/bench_connectome.py):
nodes are the parcellation's integer labels 1..max (0 is background; labels with no voxel are
empty rows); each end point of a streamline is assigned to a node, and a streamline with both
ends assigned adds 1 (--scale count), its length in mm (length) or 1/length (invlength) to
C[i,j] and C[j,i], or once to C[i,i]; streamlines with an unassigned end are left out (or
counted in row/column 0 with --keep-unassigned).

assignment (--assignment):
  radial   the labelled voxel whose centre is nearest the end point, closer than --radius mm
           (default 4 mm; tck2connectome's default, -assignment_radial_search 4)
  end      the voxel containing the end point (-assignment_end_voxels); halves round away from zero

The CSV has a header row of node names (--lut names, else the label numbers) and the full
symmetric matrix (tck2connectome -symmetric). The matrix equals
  tck2connectome T.tck PARC.nii.gz C.csv -symmetric [-assignment_end_voxels] [-scale_length|-scale_invlength]
without the header row.

outputs:
  OUT (.csv)        the matrix;  OUT.json  its provenance sidecar
  --json FILE       matrix, node labels and names, assignment counts
  --assignments F   one line per streamline: the nodes of its first and last point (tck2connectome
                    -out_assignments)

examples:
  difftract connectome tracks.trx --labels parc.nii.gz --out conn.csv
  difftract connectome tracks.tck --labels aparc.nii.gz --lut FreeSurferColorLUT.txt --out conn.csv \\
      --assignment end --scale invlength --json conn_full.json
"""


def add_parser(sub) -> None:
    from ..eval.connectome import ASSIGNMENTS, DEFAULT_RADIUS_MM, SCALES
    from ..pipeline.connectome import ConnectomeOptions

    d = ConnectomeOptions()

    p = sub.add_parser("connectome", help="node x node connectome of a tractogram and a parcellation (tck2connectome)",
                       description="Count (or weigh by length) the streamlines joining each pair of parcels of an "
                                   "integer label volume, assigning end points as MRtrix's tck2connectome does.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tractogram", type=Path, metavar="TRACTO", help=".trx, .trk or .tck file (RAS mm)")
    p.add_argument("--labels", type=Path, required=True, metavar="PARC",
                   help="integer label volume (NIfTI); node k is label k, 0 is background")
    p.add_argument("--out", type=Path, required=True, metavar="OUT", help="output CSV matrix")
    p.add_argument("--lut", type=Path, metavar="FILE",
                   help="lookup table naming the labels ('INDEX NAME ...' lines, e.g. FreeSurferColorLUT.txt)")
    p.add_argument("--assignment", choices=ASSIGNMENTS, default=d.assignment,
                   help="end-point assignment (default: %(default)s)")
    p.add_argument("--radius", type=float, default=None, metavar="MM",
                   help=f"radial search radius in mm (default: {DEFAULT_RADIUS_MM:g})")
    p.add_argument("--scale", choices=SCALES, default=d.scale,
                   help="what each streamline adds: 1, its length or its inverse length (default: %(default)s)")
    p.add_argument("--keep-unassigned", action="store_true",
                   help="keep node 0 (unassigned ends) as the first row and column")
    p.add_argument("--zero-diagonal", action="store_true", help="set the diagonal to zero")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the matrix and counts as JSON")
    p.add_argument("--assignments", type=Path, metavar="FILE",
                   help="also write each streamline's two nodes, one line per streamline")
    p.add_argument("--any-grid", action="store_true",
                   help="accept a .trk/.trx whose grid is not the parcellation's (assignment is in RAS mm)")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.set_defaults(func=cmd_connectome)


def cmd_connectome(args: argparse.Namespace) -> int:
    from ..pipeline import Console
    from ..pipeline.connectome import ConnectomeOptions, connectome_of

    options = ConnectomeOptions(assignment=args.assignment, radius=args.radius, scale=args.scale,
                                keep_unassigned=args.keep_unassigned, zero_diagonal=args.zero_diagonal,
                                any_grid=args.any_grid)
    connectome_of(args.tractogram, args.labels, args.out, options, lut=args.lut, json_out=args.json,
                  assignments_out=args.assignments, console=Console(quiet=args.quiet), force=args.force)
    return 0
