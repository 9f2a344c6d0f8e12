"""How sharp DDTracking's fODF input is in training subjects and in test phantoms.

Run: ``.venv/bin/python benchmarks/measure_fodf_sharpness.py --pool POOL --test W/unseen_random_9003 ...``

For each subject it prints the median, over voxels of fibre density (the scaled fODF's first
coefficient) above 0.7, of the ratio of the order-2 coefficients' norm to that first
coefficient: near 0 for a broad fODF, above 1 for a sharp single-fibre one. ``--pool`` is a
streamed training pool of an ``--input fodf`` run (its ``.npz`` files hold the input volume;
no white-matter mask is stored, so its voxels come from the whole brain mask); ``--test``
folders are fitted here (:func:`difftract.models.ddtracking.data.fodf_sh`) and their voxels
restricted to ``wm.nii.gz``. A measurement, not a target: it has no ``--check``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np

from difftract.io.dwi import load_subject
from difftract.models.ddtracking.data import fodf_sh

DENSITY = 0.7


def order2_ratio(sh: np.ndarray, where: np.ndarray) -> float:
    """Median ``|c_l=2| / c_00`` over the voxels of ``where`` whose fibre density exceeds :data:`DENSITY`."""
    c = sh[where & (sh[..., 0] > DENSITY)]
    return float(np.median(np.linalg.norm(c[:, 1:6], axis=1) / c[:, 0])) if len(c) else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", type=Path, help="a streamed --input fodf training pool (W.stream/)")
    ap.add_argument("--max-pool", type=int, default=6, help="first N pool subjects (default: %(default)s)")
    ap.add_argument("--test", type=Path, nargs="*", default=[], help="test phantom folders (with wm.nii.gz)")
    args = ap.parse_args(argv)
    for path in sorted(args.pool.glob("*.npz"))[: args.max_pool] if args.pool else []:
        with np.load(path) as z:
            sh = z["sh"]
        print(f"train {path.name}: {order2_ratio(sh, np.abs(sh).sum(-1) > 0):.2f}")
    for folder in args.test:
        wm = np.asarray(nib.load(folder / "wm.nii.gz").dataobj) > 0
        print(f"test  {folder.name}: {order2_ratio(fodf_sh(load_subject(folder)), wm):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
