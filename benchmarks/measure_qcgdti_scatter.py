"""Where QCG-DTI's white-matter FA error comes from: the bias and the scatter, at bundle edges and cores.

Run: ``.venv/bin/python benchmarks/measure_qcgdti_scatter.py --model before=W0.pt --model shipped=shipped``

On test subjects of ``bench_qcgdti.py`` (unseen geometry, default ``random`` 9002 with
randomised tissue, SNR 20) it fits WLS-6 and each network on the fixed DSM6 set at b = 1000
and on one flexible set per shell, then prints, per bin of the true FA above 0.2, the mean
(bias, pooled over the sets) and the standard deviation around each set's own mean (scatter:
voxel to voxel, not set to set) of the FA error, separately for white-matter voxels on an
edge (a face neighbour with true FA under 0.2: grey matter, CSF, a crossing, or outside the
mask) and in a core. Errors are against the noise-free truth of the benchmark. A blurred FA
map shows as edge voxels biased low against cores; noise as a scatter equal in both. A
measurement, not a target: it has no ``--check``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from bench_qcgdti import FLOOR, WLS6, ours, six_sets
from difftract.eval.tensor_errors import FA_BINS
from difftract.models.qcgdti.data import reference_tensor
from difftract.models.qcgdti.predict import QCGTensorModel
from difftract.reconst import tensor as T

WM_FA = 0.2


def fa_map(lt: np.ndarray) -> np.ndarray:
    """FA of tensors (..., 6) in DIPY order (eigenvalues clipped at 0)."""
    evals = torch.linalg.eigvalsh(T.from_lower_triangular(torch.from_numpy(lt.astype(np.float64)))).clamp_min(0)
    return T.fractional_anisotropy(evals).numpy()


def edge_voxels(fa_true: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """White-matter voxels with a face neighbour that is not white matter (or outside the mask)."""
    wm = mask & (fa_true >= WM_FA)
    padded = np.pad(wm, 1)
    inner = np.ones_like(wm)
    for axis in range(3):
        for shift in (-1, 1):
            inner &= np.roll(padded, shift, axis=axis)[1:-1, 1:-1, 1:-1]
    return wm & ~inner


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", default=[], metavar="NAME=W.pt",
                    help="weights (repeatable; 'shipped' for the shipped file)")
    ap.add_argument("--seeds", default="9002r", help="unseen random-preset seeds, 'r' for randomised tissue")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    models = {n: QCGTensorModel.from_weights(None if p == "shipped" else Path(p), "cpu")
              for n, p in (spec.partition("=")[::2] for spec in args.model or ["shipped=shipped"])}
    errors: dict[tuple[str, str], list[np.ndarray]] = {}   # per set: (true FA, error) of the voxels
    for seed in args.seeds.split(","):
        p, clean = ours("random", int(seed.rstrip("r")), seed.endswith("r"))
        truth = fa_map(reference_tensor(clean, p.bvals, p.bvecs, p.mask))
        edge = edge_voxels(truth, p.mask)
        for _, six in six_sets(p, 1):
            idx = [0, *six.indices]
            fields = {WLS6: reference_tensor(p.data[..., idx], p.bvals[idx], p.bvecs[idx], p.mask),
                      FLOOR: reference_tensor(clean[..., idx], p.bvals[idx], p.bvecs[idx], p.mask)}
            fields.update({n: m.fit(p.data, p.bvals, p.bvecs, p.mask, six).lower_triangular()
                           for n, m in models.items()})
            for name, lt in fields.items():
                err = fa_map(lt) - truth
                for where, sel in (("edge", edge), ("core", p.mask & (truth >= WM_FA) & ~edge)):
                    errors.setdefault((name, where), []).append(np.stack([truth[sel], err[sel]]))
    bins = [b for b in zip(FA_BINS[:-1], FA_BINS[1:]) if b[0] >= WM_FA]
    print("FA error by true-FA bin: bias / scatter (std), voxels; edge = white matter beside non-white matter")
    print(f"{'estimate':18} {'where':6} " + " ".join(f"{lo:.1f}-{hi:.1f}".center(22) for lo, hi in bins))
    for (name, where), parts in errors.items():
        cells = []
        for lo, hi in bins:
            per_set = [err[(fa >= lo) & (fa < hi)] for fa, err in parts]
            e = np.concatenate(per_set)
            centred = np.concatenate([x - x.mean() for x in per_set if len(x)]) if len(e) else e
            cells.append(f"{e.mean():+.3f} / {centred.std():.3f} {len(e):6d}" if len(e) else "-".center(22))
        print(f"{name:18} {where:6} " + " ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
