"""Write a phantom directory (DESIGN's layout) atomically.

```
OUT/dwi.nii.gz dwi.bval dwi.bvec mask.nii.gz wm.nii.gz  dwi.json (provenance)
OUT/gt/bundles/NAME.trk   gt/masks/NAME.nii.gz   gt/rois/NAME_{head,tail}.nii.gz
OUT/gt/scoring.json       gt/fractions.nii.gz    gt/peaks.nii.gz
OUT/tractogram.trk        tractogram.json            qc_phantom.png
```

The whole directory is built in a temporary folder and renamed into place, so a failed
run leaves nothing. ``scoring.json`` uses the keys of scilpy's
``scil_tractogram_segment_with_ROI_and_score`` configuration, paths relative to ``gt/``.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..io.atomic import atomic_directory
from ..io.gradients import write_bvals_bvecs
from ..io.nifti import save_nifti
from ..io.sidecar import provenance, write_json, write_sidecar
from ..io.tractogram import Tractogram, save_tractogram
from ..viz.figures import phantom_overview
from ..viz.glass_brain import glass_brain
from .simulate import MAX_POPULATIONS, Phantom


def save_phantom(phantom: Phantom, out: str | Path, force: bool = False, command: str = "simulate",
                 params: dict | None = None, inputs: list[str | Path] | tuple = (),
                 extra: dict | None = None) -> Path:
    """Write ``phantom`` to the directory ``out`` (refused if it exists, unless ``force``).

    ``inputs`` (e.g. given scheme files) are recorded in the sidecars, and so are the
    top-level keys of ``extra`` (e.g. ``{"test_data": True}``, which training refuses).
    Returns ``out``.
    """
    out = Path(out)
    params = params if params is not None else _config_params(phantom)
    record = provenance(command, params, seed=phantom.config.seed, inputs=inputs, summary=phantom.summary(),
                        frames={"bvec": "FSL (image axes, x flipped when det(affine) > 0)",
                                "gt/peaks": "unit vectors in the data-array frame, (x, y, z, 3 populations * 3)",
                                "streamlines": "RAS mm on disk"}, **(extra or {}))
    with atomic_directory(out, force=force) as tmp:
        _write(phantom, tmp, record)
    return out


def _write(p: Phantom, d: Path, record: dict) -> None:
    aff = p.affine
    save_nifti(d / "dwi.nii.gz", p.data, aff)
    write_bvals_bvecs(d / "dwi.bval", d / "dwi.bvec", p.bvals, p.bvecs, aff)
    save_nifti(d / "mask.nii.gz", p.mask, aff)
    save_nifti(d / "wm.nii.gz", p.wm, aff)
    write_sidecar(d / "dwi.nii.gz", record)
    gt = d / "gt"
    scoring = {}
    for b in p.bundles:
        save_tractogram(_tractogram(p, b.streamlines), gt / "bundles" / f"{b.name}.trk")
        save_nifti(gt / "masks" / f"{b.name}.nii.gz", b.mask, aff)
        save_nifti(gt / "rois" / f"{b.name}_head.nii.gz", b.head, aff)
        save_nifti(gt / "rois" / f"{b.name}_tail.nii.gz", b.tail, aff)
        scoring[b.name] = {"head": f"rois/{b.name}_head.nii.gz", "tail": f"rois/{b.name}_tail.nii.gz",
                           "gt_mask": f"masks/{b.name}.nii.gz"}
    write_json(gt / "scoring.json", scoring)
    save_nifti(gt / "fractions.nii.gz", p.fractions, aff)
    save_nifti(gt / "peaks.nii.gz", p.peaks.reshape(*p.shape, MAX_POPULATIONS * 3), aff)
    labels = np.concatenate([np.full(len(b.streamlines), i, dtype=np.float32) for i, b in enumerate(p.bundles)]) \
        if p.bundles else np.zeros(0, np.float32)
    everything = _tractogram(p, p.streamlines, {"bundle": labels})
    # a whole brain needs three projections; the slab presets read best from one slice
    if p.config.preset == "brain":
        from .brain import families

        glass_brain(p, d / "qc_phantom.png", families=families())
    elif p.config.preset.startswith("brain"):
        glass_brain(p, d / "qc_phantom.png")
    else:
        phantom_overview(p, d / "qc_phantom.png")
    save_tractogram(everything, d / "tractogram.trk",
                    sidecar={**record, "bundle_labels": [b.name for b in p.bundles]})


def _tractogram(p: Phantom, streamlines, per_streamline: dict | None = None) -> Tractogram:
    return Tractogram(streamlines, p.affine, p.shape, data_per_streamline=per_streamline or {})


def _config_params(p: Phantom) -> dict:
    params = asdict(p.config)
    if p.config.scheme is not None:
        params["scheme"] = "given bval/bvec"
    if p.config.noise_free_scheme is not None:
        params["noise_free_scheme"] = f"{len(p.config.noise_free_scheme[0])} volumes (not written)"
    return json.loads(json.dumps(params, default=lambda o: np.asarray(o).tolist()))
