"""Where QCG-DTI's white-matter FA error comes from: the bias and the scatter, at bundle edges and cores.

Run: ``.venv/bin/python benchmarks/measure_qcgdti_scatter.py --model before=W0.pt --model shipped=shipped``

On test subjects of ``bench_qcgdti.py`` (unseen geometry, default ``random`` 9002 with
randomised tissue, SNR 20) it fits WLS-6 and each network on the fixed DSM6 set at b = 1000
and on one flexible set per shell, then prints, per bin of the true FA above 0.2, the mean
(bias, pooled over the sets) and the standard deviation around each set's own mean (scatter:
voxel to voxel, not set to set) of the FA error, separately for white-matter voxels on an
edge (a face neighbour with true FA under 0.2: grey matter, CSF, a crossing, or outside the
mask) and in a core. Errors are against the noise-free truth of the benchmark (``--truth``, as
there: the six DWIs' shell by default; edges and cores are those of the all-shells truth). A blurred FA
map shows as edge voxels biased low against cores; noise as a scatter equal in both. A
measurement, not a target: it has no ``--check``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import binary_erosion

from bench_qcgdti import FLOOR, WLS6, ours, six_sets
from difftract.eval.tensor_errors import binned_tensor_errors
from difftract.models.qcgdti.data import reference_tensor, shell_index, shell_references
from difftract.models.qcgdti.predict import QCGTensorModel
from difftract.reconst import tensor as T

WM_FA = 0.2


def edge_and_core(truth: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """White-matter voxels (true FA >= 0.2) with a face neighbour that is not white matter, and the rest."""
    fa = T.fractional_anisotropy(T.decompose(torch.from_numpy(truth.astype(np.float64)))[0]).numpy()
    wm = mask & (fa >= WM_FA)
    core = binary_erosion(wm, border_value=0)     # the default structure: the six face neighbours
    return {"edge": wm & ~core, "core": core}


def pooled(rows_per_set: list[list[dict]]) -> list[tuple[int, float, float]]:
    """Per bin, over the sets: voxels, the mean FA error, and the scatter around each set's own mean."""
    out = []
    for rows in zip(*rows_per_set):
        n = np.array([r["voxels"] for r in rows], dtype=float)
        if not n.sum():
            out.append((0, float("nan"), float("nan")))
            continue
        used = n > 0
        bias = np.array([r["fa_bias"] for r in rows])[used]
        std = np.array([r["fa_std"] for r in rows])[used]
        w = n[used] / n.sum()
        out.append((int(n.sum()), float(w @ bias), float(np.sqrt(w @ std ** 2))))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", default=[], metavar="NAME=W.pt",
                    help="weights (repeatable; 'shipped' for the shipped file)")
    ap.add_argument("--seeds", default="9002r", help="unseen random-preset seeds, 'r' for randomised tissue")
    ap.add_argument("--truth", choices=("shell", "all-shells"), default="shell",
                    help="the reference: the noise-free fit of the set's shell, or of every volume (default: shell)")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    models = {n: QCGTensorModel.from_weights(None if p == "shipped" else Path(p), "cpu")
              for n, p in (spec.partition("=")[::2] for spec in args.model or ["shipped=shipped"])}
    rows: dict[tuple[str, str], list[list[dict]]] = {}   # per (estimate, edge or core): each set's bins
    for seed in args.seeds.split(","):
        p, clean = ours("random", int(seed.rstrip("r")), seed.endswith("r"))
        every = reference_tensor(clean, p.bvals, p.bvecs, p.mask)
        places = edge_and_core(every, p.mask)
        shell_bvals, per_shell = shell_references(clean, p.bvals, p.bvecs, p.mask)
        for _, six in six_sets(p, 1):
            truth = every if args.truth == "all-shells" else per_shell[..., shell_index(shell_bvals, six.shell), :]
            idx = [0, *six.indices]
            fields = {WLS6: reference_tensor(p.data[..., idx], p.bvals[idx], p.bvecs[idx], p.mask),
                      FLOOR: reference_tensor(clean[..., idx], p.bvals[idx], p.bvecs[idx], p.mask)}
            fields.update({n: m.fit(p.data, p.bvals, p.bvecs, p.mask, six).lower_triangular()
                           for n, m in models.items()})
            for name, lt in fields.items():
                for where, sel in places.items():
                    if sel.any():
                        rows.setdefault((name, where), []).append(binned_tensor_errors(lt, truth, sel))
    bins = [(r["lo"], r["hi"]) for r in next(iter(rows.values()))[0]]
    shown = [k for k, (lo, _) in enumerate(bins) if lo >= WM_FA]
    print("FA error by true-FA bin: bias / scatter (std), voxels; edge = white matter beside non-white matter")
    print(f"{'estimate':18} {'where':6} " + " ".join(f"{bins[k][0]:.1f}-{bins[k][1]:.1f}".center(22) for k in shown))
    for (name, where), per_set in rows.items():
        cells = pooled(per_set)
        print(f"{name:18} {where:6} " + " ".join(
            f"{cells[k][1]:+.3f} / {cells[k][2]:.3f} {cells[k][0]:6d}" if cells[k][0] else "-".center(22)
            for k in shown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
