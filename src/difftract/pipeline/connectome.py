"""The connectome as a pipeline stage: a tractogram file and a parcellation -> a node x node CSV.

``difftract connectome`` parses its options into :class:`ConnectomeOptions` and calls
:func:`connectome_of`, which assigns each streamline's end points to parcels as MRtrix's
``tck2connectome`` does (:mod:`difftract.eval.connectome`), and writes the matrix with its
provenance sidecar, and optionally the full JSON record and each streamline's node pair,
all or none of them.

>>> from difftract.pipeline import ConnectomeOptions, connectome_of
>>> options = ConnectomeOptions(scale="invlength")
>>> conn = connectome_of("tracks.trx", "parc.nii.gz", "conn.csv", options)   # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..eval.connectome import DEFAULT_RADIUS_MM
from ..console import Console

log = logging.getLogger("difftract")


@dataclass(frozen=True)
class ConnectomeOptions:
    """How end points are assigned and what each streamline adds (checked when made).

    Attributes
    ----------
    assignment : str
        ``radial`` (the nearest labelled voxel within ``radius`` mm) or ``end`` (the voxel of the end point).
    radius : float, optional
        Radial search radius, mm (``radial`` only; default :data:`~difftract.eval.connectome.DEFAULT_RADIUS_MM`).
    scale : str
        ``count``, ``length`` or ``invlength``.
    keep_unassigned : bool
        Keep node 0 (unassigned ends) as the first row and column.
    zero_diagonal : bool
        Set the diagonal to zero.
    any_grid : bool
        Accept a tractogram whose grid is not the parcellation's (assignment is in RAS mm).
    """

    assignment: str = "radial"
    radius: float | None = None
    scale: str = "count"
    keep_unassigned: bool = False
    zero_diagonal: bool = False
    any_grid: bool = False

    def __post_init__(self):
        if self.radius is not None and self.assignment != "radial":
            raise ConfigError("--radius applies to --assignment radial only")
        if not (np.isfinite(self.radius_mm) and self.radius_mm > 0):
            raise ConfigError(f"--radius must be a positive number of mm, got {self.radius_mm:g}")

    @property
    def radius_mm(self) -> float:
        return DEFAULT_RADIUS_MM if self.radius is None else self.radius

    def equivalent(self) -> str:
        """The ``tck2connectome`` line that computes the same matrix (for the sidecar)."""
        return ("tck2connectome TRACTO PARC OUT -symmetric"
                + (" -assignment_end_voxels" if self.assignment == "end"
                   else f" -assignment_radial_search {self.radius_mm:g}")
                + {"count": "", "length": " -scale_length", "invlength": " -scale_invlength"}[self.scale]
                + (" -keep_unassigned" if self.keep_unassigned else "")
                + (" -zero_diagonal" if self.zero_diagonal else ""))


def connectome_of(tractogram: str | Path, labels: str | Path, out: str | Path,
                  options: ConnectomeOptions = ConnectomeOptions(), *, lut: str | Path | None = None,
                  json_out: str | Path | None = None, assignments_out: str | Path | None = None,
                  console: Console = Console(), force: bool = False):
    """The connectome of ``tractogram`` over the parcels of ``labels``, written to the CSV ``out``.

    ``lut`` names the labels; ``json_out`` also writes the matrix, node labels and names and
    the assignment counts; ``assignments_out`` each streamline's two nodes, one line per
    streamline. Returns the :class:`~difftract.eval.connectome.Connectome`.
    """
    from ..eval.connectome import build_connectome, check_grid, format_csv, load_parcellation, read_streamlines_rasmm
    from ..io.atomic import atomic_outputs, check_outputs
    from ..io.sidecar import provenance, sidecar_path

    tractogram, labels, out = Path(tractogram), Path(labels), Path(out)
    if out.suffix.lower() == ".json":
        raise ConfigError(f"{out}: --out is the CSV matrix; use --json for a JSON file")
    outputs = [p for p in (out, sidecar_path(out), json_out, assignments_out) if p is not None]
    inputs = [p for p in (tractogram, labels, lut) if p is not None]
    check_outputs(outputs, force, inputs=inputs)

    start = time.perf_counter()
    parcellation = load_parcellation(labels, lut)
    streamlines, grid = read_streamlines_rasmm(tractogram)
    if not options.any_grid:
        check_grid(grid, parcellation, tractogram)
    conn = build_connectome(streamlines, parcellation, options.assignment, options.radius_mm, options.scale,
                            keep_unassigned=options.keep_unassigned, zero_diagonal=options.zero_diagonal)
    summary = conn.summary()
    params = {**conn.params, "lut": lut, "any_grid": options.any_grid}
    record = provenance("connectome", params, inputs=inputs, summary=summary, equivalent=options.equivalent())
    with atomic_outputs(outputs, force=force) as stage:
        stage(out).write_text(format_csv(conn))
        stage(sidecar_path(out)).write_text(json.dumps(record, indent=2) + "\n")
        if json_out is not None:
            full = {"node_labels": conn.node_labels, "node_names": conn.node_names,
                    "matrix": conn.matrix.tolist(), "summary": summary, "provenance": record}
            stage(json_out).write_text(json.dumps(full, indent=1) + "\n")
        if assignments_out is not None:
            stage(assignments_out).write_text("".join(f"{a} {b}\n" for a, b in conn.assignments))
    seconds = time.perf_counter() - start
    n = summary["streamlines"]
    radial = f" {options.radius_mm:g} mm" if options.assignment == "radial" else ""
    console.say(f"{tractogram}: {n} streamlines, {summary['assigned']} with both ends assigned "
                f"({summary['one_end_unassigned']} with one end and {summary['both_ends_unassigned']} with none "
                f"unassigned), {summary['self_connections']} self-connections")
    console.say(f"{len(conn.node_labels)} x {len(conn.node_labels)} matrix ({options.assignment}{radial}, "
                f"{options.scale}), {summary['edges']} edges, upper-triangle sum {summary['upper_sum']:.6g} -> {out} "
                f"({seconds:.1f} s)")
    if summary["assigned"] == 0 and n:
        log.warning("no streamline has both ends in labelled parcels: is the parcellation in the "
                    "tractogram's space?")
    return conn
