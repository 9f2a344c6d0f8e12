"""The run's report: ``report.html`` (and tractometry profiles) from the files a run wrote.

Built last, from the files themselves (the DTI maps, each tractogram with its sidecar,
the scores), so the page shows what a user will find in the folder.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("difftract")


def report(directory: Path, tractograms: list[tuple[str, Path]], title: str, params: dict,
           mask: Path | None = None, truth=None) -> dict:
    """Write ``directory/report.html`` from the run's files; returns the first method's summary.

    ``mask`` is the brain mask outlined on the colour FA (default: where FA was fitted).
    ``truth`` is the ground truth (a loaded :class:`~difftract.eval.tractometer.ScoringConfig`), if any: with it, each method's FA and MD
    profiles along the ground-truth bundles go into the report and ``directory/profiles.csv``.
    """
    from ..io.nifti import load_nifti
    from ..io.sidecar import sidecar_path
    from ..io.tractogram import load_tractogram
    from ..viz.report import MethodResult, write_report

    rgb = np.asarray(load_nifti(directory / "dti" / "rgb.nii.gz", "colour FA").dataobj)
    fa_img = load_nifti(directory / "dti" / "fa.nii.gz", "FA")
    mask = np.asarray((load_nifti(mask, "mask") if mask is not None else fa_img).dataobj) > 0
    voxel = float(np.linalg.norm(fa_img.affine[:3, 0]))
    results = []
    for name, path in tractograms:
        tract = load_tractogram(path, reference=(fa_img.affine, fa_img.shape))
        sidecar = _json(sidecar_path(path))
        scores_path = directory / ("scores.json" if len(tractograms) == 1 else f"scores_{name}.json")
        results.append(MethodResult(name, list(tract.streamlines), voxel, _json(scores_path),
                                    (sidecar or {}).get("seconds"), (sidecar or {}).get("params", {}), sidecar))
    if truth is not None:
        _tractometry(directory, results, fa_img, truth, [p for _, p in tractograms])
    write_report(directory, title=title, rgb=rgb, mask=mask, results=results, params=params,
                 provenance={"dti": _json(directory / "dti" / "fa.json")}, force=True)
    first = results[0]
    return {"streamlines": len(first.streamlines), "mean_length_mm": first.mean_length_mm}


def _tractometry(directory: Path, results: list, fa_img, config, tractograms: list[Path]) -> None:
    """With ground truth on the FA's grid: profiles on each result, and ``directory/profiles.csv``."""
    from ..eval.profiles import N_POINTS, tractometry, truth_profiles, write_profiles_csv
    from ..io.nifti import load_nifti
    from ..io.sidecar import provenance

    if config.shape != tuple(fa_img.shape[:3]) or not np.allclose(config.affine, fa_img.affine, atol=1e-4):
        log.warning("%s: the ground truth is not on the DTI maps' grid; no tractometry profiles", config.path)
        return
    fa = np.asarray(fa_img.dataobj, dtype=np.float64)
    md = np.asarray(load_nifti(directory / "dti" / "md.nii.gz", "MD").dataobj, dtype=np.float64)
    reference = truth_profiles(config, fa, md, N_POINTS)
    for r in results:
        r.profiles = tractometry(r.streamlines, config, fa, md, N_POINTS, reference)
    record = provenance("tractometry", {"n_points": N_POINTS, "orientation": "head ROI -> tail ROI",
                                        "weights": "gaussian (DIPY); plain mean under 4 streamlines or non-finite"},
                        inputs=[*tractograms, directory / "dti" / "fa.nii.gz", directory / "dti" / "md.nii.gz", config.path])
    write_profiles_csv(directory / "profiles.csv", {r.name: r.profiles for r in results}, force=True,
                       provenance=record)


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None
