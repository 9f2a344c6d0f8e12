"""QCG-DTI's MD bias per shell and SNR: what an MD correction would have to remove.

Run: ``cd benchmarks && ../.venv/bin/python measure_qcgdti_md.py --model shipped=shipped --model md=W.pt``

On test subjects of ``bench_qcgdti.py`` (unseen geometry: ``random`` 9001 with the default
tissue, 9002 with randomised tissue, at SNR 20 and 9002 at SNR 8) it fits WLS-6 and each
network on one flexible six-DWI set per shell and prints the mean signed MD error (1e-3
mm^2/s) against the noise-free tensor of that shell (the benchmark's default truth), apart
for white-matter voxels (true FA above 0.2) and the rest of the mask. A measurement, not a
target: it has no ``--check``.

``--noise-floor`` prints instead what the noise model alone does to the fit of a full shell:
on subject 9002 (randomised tissue) with Rician noise and with the root-sum-of-squares of 4,
16 and 32 coils at b0 SNR 20 and 8, the mean white-matter (true FA above 0.4) MD and FA error
of WLS on the b0s and every direction of each shell, against the noise-free tensor of that
shell (the figures in :mod:`difftract.training.domain`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from bench_qcgdti import WLS6, ours, scheme_of, six_sets
from difftract.models.qcgdti.data import reference_tensor, shell_index, shell_references
from difftract.models.qcgdti.predict import QCGTensorModel
from difftract.phantom import PhantomConfig, simulate
from difftract.phantom.acquisition import AcquisitionRanges
from difftract.reconst import tensor as T

WM_FA = 0.2             # white matter in the MD table (the benchmark's bins above 0.2)
WHITE_MATTER_FA = 0.4   # in the noise-floor table (the training's white-matter monitor)
SUBJECTS = ((9001, False, 20.0), (9002, True, 20.0), (9002, True, 8.0))   # seed, randomised tissue, SNR


def md_and_fa(lt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MD and FA of tensors (..., 6) in DIPY's order (eigenvalues clipped at 0, as a fit reports them)."""
    evals = T.decompose(torch.from_numpy(lt.astype(np.float64)))[0]
    return T.mean_diffusivity(evals).numpy(), T.fractional_anisotropy(evals).numpy()


def noise_floor() -> None:
    """Full-shell WLS against the shell's noise-free tensor, per noise model and SNR (white matter)."""
    print("mean white-matter error of WLS on a full shell: MD (1e-3 mm^2/s) / FA")
    for coils in (1, 4, 16, 32):
        for snr in (20.0, 8.0):
            ranges = AcquisitionRanges(snr=(snr, snr), rician_probability=1.0 if coils == 1 else 0.0,
                                       coils=(max(coils, 2),) * 2)
            p = simulate(PhantomConfig(preset="random", seed=9002, randomize=True, voxel_size=2.0, snr=snr,
                                       acquisition_ranges=ranges, scheme=scheme_of(9002),
                                       noise_free_scheme=scheme_of(9002)))
            shell_bvals, truths = shell_references(p.noise_free, p.bvals, p.bvecs, p.mask)
            _, fits = shell_references(p.data, p.bvals, p.bvecs, p.mask)
            cells = []
            for k, b in enumerate(shell_bvals):
                (true_md, true_fa), (md, fa) = md_and_fa(truths[..., k, :]), md_and_fa(fits[..., k, :])
                wm = p.mask & (true_fa > WHITE_MATTER_FA)
                cells.append(f"b{b:.0f} {(md - true_md)[wm].mean() * 1e3:+.3f} / {(fa - true_fa)[wm].mean():+.3f}")
            noise = "Rician" if coils == 1 else f"{coils} coils"
            print(f"{noise:9} SNR {snr:2g} | " + " | ".join(cells), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", metavar="NAME=W.pt",
                    help="weights ('shipped' for the shipped file); repeatable")
    ap.add_argument("--noise-floor", action="store_true", help="the noise model's effect on a full-shell fit instead")
    args = ap.parse_args()
    if args.noise_floor:
        return noise_floor()
    models = {}
    for spec in args.model or ["shipped=shipped"]:
        name, _, path = spec.partition("=")
        models[name] = QCGTensorModel.from_weights(None if path == "shipped" else Path(path), "cpu")
    print("mean MD error (1e-3 mm^2/s) against the shell's noise-free tensor: white matter / rest of the mask")
    for seed, randomized, snr in SUBJECTS:
        p, clean = ours("random", seed, randomized, snr)
        shell_bvals, truths = shell_references(clean, p.bvals, p.bvecs, p.mask)
        for scheme, six in six_sets(p, 1):
            if not scheme.startswith("flexible"):
                continue
            true_md, true_fa = md_and_fa(truths[..., shell_index(shell_bvals, six.shell), :])
            wm, rest = p.mask & (true_fa > WM_FA), p.mask & (true_fa <= WM_FA)
            idx = [0, *six.indices]
            estimates = {WLS6: reference_tensor(p.data[..., idx], p.bvals[idx], p.bvecs[idx], p.mask)}
            for name, model in models.items():
                estimates[name] = model.fit(p.data, p.bvals, p.bvecs, p.mask, six).lower_triangular()
            cells = []
            for name, est in estimates.items():
                error = (md_and_fa(est)[0] - true_md) * 1e3
                cells.append(f"{name} {error[wm].mean():+.3f} / {error[rest].mean():+.3f}")
            print(f"{seed} SNR {snr:g} {scheme:14} | " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
