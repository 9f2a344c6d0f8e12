"""``difftract connectome``: a structural connectome (node x node CSV) with MRtrix tck2connectome's semantics."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from ..errors import ConfigError

log = logging.getLogger("difftract")

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
    p.add_argument("--assignment", choices=ASSIGNMENTS, default="radial",
                   help="end-point assignment (default: %(default)s)")
    p.add_argument("--radius", type=float, default=None, metavar="MM",
                   help=f"radial search radius in mm (default: {DEFAULT_RADIUS_MM:g})")
    p.add_argument("--scale", choices=SCALES, default="count",
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
    from ..eval.connectome import (DEFAULT_RADIUS_MM, build_connectome, check_grid, format_csv,
                                   load_parcellation, read_streamlines_rasmm)
    from ..io.atomic import atomic_outputs, check_outputs
    from ..io.sidecar import provenance, sidecar_path

    if args.radius is not None and args.assignment != "radial":
        raise ConfigError("--radius applies to --assignment radial only")
    radius = DEFAULT_RADIUS_MM if args.radius is None else args.radius
    if not (np.isfinite(radius) and radius > 0):
        raise ConfigError(f"--radius must be a positive number of mm, got {radius:g}")
    if args.out.suffix.lower() == ".json":
        raise ConfigError(f"{args.out}: --out is the CSV matrix; use --json for a JSON file")
    outputs = [args.out, sidecar_path(args.out), args.json, args.assignments]
    outputs = [p for p in outputs if p is not None]
    inputs = [p for p in (args.tractogram, args.labels, args.lut) if p is not None]
    check_outputs(outputs, args.force, inputs=inputs)

    start = time.perf_counter()
    parcellation = load_parcellation(args.labels, args.lut)
    streamlines, grid = read_streamlines_rasmm(args.tractogram)
    if not args.any_grid:
        check_grid(grid, parcellation, args.tractogram)
    conn = build_connectome(streamlines, parcellation, args.assignment, radius, args.scale,
                            keep_unassigned=args.keep_unassigned, zero_diagonal=args.zero_diagonal)
    summary = conn.summary()
    params = {**conn.params, "lut": args.lut, "any_grid": args.any_grid}
    record = provenance("connectome", params, inputs=inputs, summary=summary,
                        equivalent="tck2connectome TRACTO PARC OUT -symmetric"
                                   + (" -assignment_end_voxels" if args.assignment == "end"
                                      else f" -assignment_radial_search {radius:g}")
                                   + {"count": "", "length": " -scale_length",
                                      "invlength": " -scale_invlength"}[args.scale]
                                   + (" -keep_unassigned" if args.keep_unassigned else "")
                                   + (" -zero_diagonal" if args.zero_diagonal else ""))
    with atomic_outputs(outputs, force=args.force) as stage:
        stage(args.out).write_text(format_csv(conn))
        stage(sidecar_path(args.out)).write_text(json.dumps(record, indent=2) + "\n")
        if args.json is not None:
            full = {"node_labels": conn.node_labels, "node_names": conn.node_names,
                    "matrix": conn.matrix.tolist(), "summary": summary, "provenance": record}
            stage(args.json).write_text(json.dumps(full, indent=1) + "\n")
        if args.assignments is not None:
            stage(args.assignments).write_text("".join(f"{a} {b}\n" for a, b in conn.assignments))
    seconds = time.perf_counter() - start
    n = summary["streamlines"]
    print(f"{args.tractogram}: {n} streamlines, {summary['assigned']} with both ends assigned "
          f"({summary['one_end_unassigned']} with one end and {summary['both_ends_unassigned']} with none "
          f"unassigned), {summary['self_connections']} self-connections")
    print(f"{len(conn.node_labels)} x {len(conn.node_labels)} matrix ({args.assignment}"
          f"{f' {radius:g} mm' if args.assignment == 'radial' else ''}, {args.scale}), "
          f"{summary['edges']} edges, upper-triangle sum {summary['upper_sum']:.6g} -> {args.out} "
          f"({seconds:.1f} s)")
    if summary["assigned"] == 0 and n:
        log.warning("no streamline has both ends in labelled parcels: is the parcellation in the "
                    "tractogram's space?")
    return 0
