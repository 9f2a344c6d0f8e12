"""difftract's Tractometer against scilpy 2.3.0's, on the same files; prints every difference.

Not run in CI (scilpy brings ~1.8 GB of dependencies). Needs scilpy importable by this
Python, or ``--scilpy-python`` pointing at a Python that has it, e.g.::

    python3 -m venv /tmp/scil && /tmp/scil/bin/pip install torch==2.13.0 scilpy==2.3.0
    .venv/bin/python benchmarks/compare_scilpy.py --scilpy-python /tmp/scil/bin/python

What it scores, each with ``scil_tractogram_segment_with_ROI_and_score --compute_ic
--unique --gt_dir PHANTOM/gt`` and with difftract's :func:`difftract.eval.tractometer.score`:

1. the fibercup phantom's ground-truth tractogram (``tractogram.trk``);
2. a tractogram tracked by DIPY (CSD lmax 6, deterministic, 0.5 mm steps, FA > 0.25, 2
   seeds per white-matter voxel: valid, invalid and unconnected streamlines), as ``.trk``;
3. the same with every other streamline reversed, written as ``.tck`` (read with the
   phantom's mask as reference).

Every key of scilpy's ``results.json`` is compared: counts must be equal and ratios
within ``--tol`` (1e-6). The last line is a JSON summary.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np

from difftract.eval.tractometer import load_scoring, score
from difftract.io.tractogram import Tractogram, load_tractogram, save_tractogram
from difftract.phantom import PhantomConfig, save_phantom, simulate


def track_with_dipy(phantom_dir: Path, seeds_per_voxel: int = 2, seed: int = 0) -> Tractogram:
    """Deterministic CSD tracking with DIPY on the phantom (the reference tracker of the field)."""
    from dipy.core.gradients import gradient_table
    from dipy.data import default_sphere
    from dipy.direction import DeterministicMaximumDirectionGetter
    from dipy.io.gradients import read_bvals_bvecs
    from dipy.reconst.csdeconv import ConstrainedSphericalDeconvModel, auto_response_ssst
    from dipy.tracking.local_tracking import LocalTracking
    from dipy.tracking.stopping_criterion import ThresholdStoppingCriterion
    from dipy.tracking.utils import random_seeds_from_mask

    from difftract.io.dwi import load_subject
    from difftract.reconst.dti import TensorModel

    dwi = load_subject(phantom_dir)
    gtab = dwi.gtab
    wm = nib.load(phantom_dir / "wm.nii.gz").get_fdata() > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        response, _ = auto_response_ssst(gtab, dwi.data, roi_radii=20, fa_thr=0.6)
        fit = ConstrainedSphericalDeconvModel(gtab, response, sh_order_max=6).fit(dwi.data, mask=dwi.mask)
        getter = DeterministicMaximumDirectionGetter.from_shcoeff(fit.shm_coeff, max_angle=40,
                                                                  sphere=default_sphere)
        seeds = random_seeds_from_mask(wm, np.eye(4), seeds_count=seeds_per_voxel, seed_count_per_voxel=True,
                                       random_seed=seed)
        fa = TensorModel(gtab).fit(dwi.data, dwi.mask).fa
        streamlines = LocalTracking(getter, ThresholdStoppingCriterion(fa, 0.25), seeds, np.eye(4), step_size=0.25)
        streamlines = [s for s in streamlines if len(s) > 1]
    return Tractogram(streamlines, dwi.affine, dwi.shape)


def run_scilpy(python: str, tractogram: Path, phantom_dir: Path, out: Path) -> dict:
    cmd = [python, "-m", "scilpy.cli.scil_tractogram_segment_with_ROI_and_score", str(tractogram),
           str(phantom_dir / "gt" / "scoring.json"), str(out), "--gt_dir", str(phantom_dir / "gt"),
           "--compute_ic", "--unique", "-f"]
    if tractogram.suffix == ".tck":
        cmd += ["--reference", str(phantom_dir / "mask.nii.gz")]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"scilpy failed on {tractogram}:\n{done.stderr[-3000:]}")
    return json.loads((out / "results.json").read_text())


def differences(ours, theirs, tol: float, path: str = "") -> list[str]:
    """Every key where the two result trees differ (missing keys, counts, numbers beyond tol)."""
    out = []
    if isinstance(theirs, dict):
        for key in sorted(set(theirs) | set(ours if isinstance(ours, dict) else {})):
            if key == "tractogram_filename":
                continue
            if not isinstance(ours, dict) or key not in ours:
                out.append(f"{path}/{key}: missing in difftract (scilpy {theirs[key]!r})")
            elif key not in theirs:
                out.append(f"{path}/{key}: only in difftract ({ours[key]!r})")
            else:
                out += differences(ours[key], theirs[key], tol, f"{path}/{key}")
    elif isinstance(theirs, (int, float)) and isinstance(ours, (int, float)):
        if isinstance(theirs, int) and isinstance(ours, int) and ours != theirs:
            out.append(f"{path}: difftract {ours} vs scilpy {theirs}")
        elif abs(float(ours) - float(theirs)) > tol:
            out.append(f"{path}: difftract {ours!r} vs scilpy {theirs!r} (diff {float(ours) - float(theirs):.3g})")
    elif ours != theirs:
        out.append(f"{path}: difftract {ours!r} vs scilpy {theirs!r}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scilpy-python", default=None, help="a Python with scilpy 2.3.0 (default: this one)")
    parser.add_argument("--phantom", type=Path, default=None, help="phantom directory (default: simulate fibercup)")
    parser.add_argument("--tol", type=float, default=1e-6)
    args = parser.parse_args()
    python = args.scilpy_python or sys.executable
    if args.scilpy_python is None and importlib.util.find_spec("scilpy") is None:
        print("scilpy is not importable here; pass --scilpy-python (see the module docstring). Nothing compared.")
        print(json.dumps({"compared": 0}))
        return
    work = Path(tempfile.mkdtemp(prefix="compare_scilpy_"))
    phantom_dir = args.phantom or save_phantom(simulate(PhantomConfig(preset="fibercup", seed=0)), work / "phantom")
    tracked = track_with_dipy(phantom_dir)
    save_tractogram(tracked, work / "tracked.trk")
    flipped = [s[::-1] if i % 2 else s for i, s in enumerate(tracked.streamlines)]
    save_tractogram(Tractogram(flipped, tracked.affine, tracked.dimensions), work / "tracked_flipped.tck")
    config = load_scoring(phantom_dir)
    summary = {}
    for name, path in (("ground truth", phantom_dir / "tractogram.trk"), ("DIPY-tracked", work / "tracked.trk"),
                       ("DIPY-tracked, half reversed, .tck", work / "tracked_flipped.tck")):
        ours = score(load_tractogram(path, reference=phantom_dir / "mask.nii.gz").streamlines, config).scores
        theirs = run_scilpy(python, path, phantom_dir, work / f"scilpy_{path.stem}")
        diff = differences(json.loads(json.dumps(ours)), theirs, args.tol)
        summary[name] = {"streamlines": ours["total_streamlines"], "differences": len(diff), "VS": ours["VS"],
                         "IC": ours["IC"], "NC": ours["NC"], "VB": ours["VB"], "mean_OL": ours.get("mean_OL")}
        print(f"{name}: {ours['total_streamlines']} streamlines, VS {ours['VS']} / IC {ours['IC']} / NC {ours['NC']}, "
              f"VB {ours['VB']}, mean OL {ours.get('mean_OL', float('nan')):.6f}: "
              f"{'identical' if not diff else f'{len(diff)} difference(s)'}")
        for line in diff:
            print("   ", line)
    print(json.dumps({"compared": len(summary), "tol": args.tol, "results": summary}))


if __name__ == "__main__":
    main()
