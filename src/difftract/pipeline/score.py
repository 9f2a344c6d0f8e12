"""Scoring as a pipeline stage: Tractometer scores of a tractogram file against a phantom's ground truth."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..console import Console

log = logging.getLogger("difftract")


def score_tractogram(tractogram: Path, phantom, json_out: Path | None = None, *, reference: Path | None = None,
                     console: Console = Console(), force: bool = False, equivalent: str | None = None):
    """Score ``tractogram`` against ``phantom`` (a phantom directory, its ``gt/``, a ``scoring.json``, or
    the :class:`~difftract.eval.tractometer.ScoringConfig` loaded from one).

    Prints the table, writes ``json_out`` (scilpy's keys, with provenance) when given, and
    returns the :class:`~difftract.eval.tractometer.TractometerResult`.
    """
    from ..eval.tractometer import ScoringConfig, format_table, load_scoring, score
    from ..eval.traversal import count_off_grid
    from ..io.atomic import check_outputs
    from ..io.sidecar import provenance, write_json
    from ..io.tractogram import load_tractogram

    tractogram = Path(tractogram)
    if json_out is not None:
        check_outputs([json_out], force, inputs=[tractogram])
    config = phantom if isinstance(phantom, ScoringConfig) else load_scoring(phantom)
    if reference is None:
        mask = config.path.parent.parent / "mask.nii.gz"
        reference = mask if mask.is_file() else config.reference
    start = time.perf_counter()
    loaded = load_tractogram(tractogram, reference=reference)
    if tuple(loaded.dimensions) != config.shape or not np.allclose(loaded.affine, config.affine, atol=1e-4):
        raise InputError(tractogram, f"is on grid {tuple(loaded.dimensions)} but the ground truth of "
                                     f"{config.path} is on {config.shape} (or their affines differ)")
    outside = count_off_grid(loaded.streamlines, config.shape)
    if outside:
        log.warning("%d streamline(s) have points off the grid; their off-grid parts are ignored and their ends "
                    "take the nearest voxel (scilpy refuses such tractograms)", outside)
    result = score(loaded.streamlines, config)
    seconds = time.perf_counter() - start
    console.say(f"{tractogram} against {config.path} ({seconds:.1f} s)")
    console.say(format_table(result))
    if json_out is not None:
        record = {**result.scores, "tractogram_filename": str(tractogram),
                  "provenance": provenance("score", {"mode": "unique, compute_ic (scilpy 2.3.0 semantics)"},
                                           inputs=[tractogram, config.path], equivalent=equivalent)}
        write_json(json_out, record, force=force)
    return result
