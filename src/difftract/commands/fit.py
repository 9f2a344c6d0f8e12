"""``difftract fit dti|sh|csd``: fitted maps as NIfTI, with sidecars and a QC picture."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..io.atomic import check_output, check_outputs
from .common import (add_compute_arguments, add_scan_arguments, compute_options, load_scan, memory_guard,
                     output_files, qc_path, scan_inputs)

log = logging.getLogger("difftract")

EPILOG_DTI = """\
outputs (in OUT_DIR, each NIfTI with a JSON sidecar):
  tensor.nii.gz   6 tensor elements, mm^2/s; order and frame set by --tensor-format
  fa md ad rd     scalar maps (diffusivities in mm^2/s)
  rgb             colour FA; evals (3), evecs (3x3, columns), v1 (principal eigenvector); s0
  qc_dti.png      FA and colour-FA slices

examples:
  difftract fit dti dwi.nii.gz dwi.bval dwi.bvec --mask mask.nii.gz --out-dir dti
  difftract fit dti dwi.nii.gz dwi.bval dwi.bvec --mask mask.nii.gz --out-dir dti --tensor-format mrtrix
  difftract fit dti dwi6.nii.gz dwi6.bval dwi6.bvec --mask mask.nii.gz --out-dir qcg --method qcg
  difftract fit dti dwi.nii.gz dwi.bval dwi.bvec --mask mask.nii.gz --out-dir qcg --method qcg --select-six

--method qcg (QCG-DTI) takes one b0 (the first) and exactly six DWIs of any directions and
b-value; with more DWIs, --select-six picks the six nearest to a rotated DSM6 set on --shell
(mean angle < 5 degrees, design condition number < 2; --seed draws the rotation). It uses the
shipped weights unless --weights is given; the sidecar records the six volumes and the checksum.
"""


def add_parser(sub) -> None:
    fit = sub.add_parser("fit", help="fit DTI, signal SH or CSD fODFs to a scan",
                         description="Fit a model to every voxel of the mask, batched in torch (CPU or GPU).")
    models = fit.add_subparsers(dest="model", metavar="MODEL", required=True)

    dti = models.add_parser(
        "dti", help="diffusion tensor (WLS or OLS): tensor, FA, MD, AD, RD, colour FA, eigenvectors",
        description="Fit the diffusion tensor by weighted (WLS, DIPY's default) or ordinary (OLS) log-linear "
                    "least squares. The numbers are DIPY's TensorModel's, computed several times faster.",
        epilog=EPILOG_DTI, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_scan_arguments(dti)
    dti.add_argument("--out-dir", type=Path, required=True, metavar="D", help="output directory")
    dti.add_argument("--method", choices=("wls", "ols", "qcg"), default="wls",
                     help="fit method: least squares, or the QCG-DTI network (default: %(default)s)")
    dti.add_argument("--weights", type=Path, metavar="W", help="QCG-DTI weights (default: the shipped ones)")
    dti.add_argument("--select-six", action="store_true",
                     help="QCG-DTI on a scan with more than six DWIs: pick six as described below")
    dti.add_argument("--shell", type=float, default=None, metavar="B",
                     help="shell for --select-six (default: the lowest non-zero b-value)")
    dti.add_argument("--seed", type=int, default=0, help="seed of --select-six's rotation (default: %(default)s)")
    dti.add_argument("--tensor-format", choices=("dipy", "fsl", "mrtrix"), default="dipy",
                     help="element order and frame of tensor.nii.gz (default: %(default)s)")
    add_compute_arguments(dti)
    dti.set_defaults(func=cmd_fit_dti)

    sh = models.add_parser(
        "sh", help="spherical-harmonic fit of the b0-normalised signal (descoteaux07)",
        description="Fit real symmetric SH (DIPY's descoteaux07 basis) to the b0-normalised signal of one shell "
                    "(mean b0; DW clipped to <= b0; divided by b0), with Laplace-Beltrami regularisation. "
                    "Coefficients equal dipy.reconst.shm.sf_to_sh's.",
        epilog="outputs: OUT (X, Y, Z, n_coeffs) with OUT's JSON sidecar, and OUT_qc.png (GFA and c0 slices)\n\n"
               "example:\n  difftract fit sh dwi.nii.gz dwi.bval dwi.bvec --mask mask.nii.gz --out sh.nii.gz --lmax 6",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_scan_arguments(sh)
    sh.add_argument("--out", type=Path, required=True, metavar="SH", help="output NIfTI")
    add_sh_arguments(sh, default_lmax=6)
    sh.add_argument("--smooth", type=float, default=0.006,
                    help="Laplace-Beltrami regularisation lambda (DIPY's default: %(default)s; 0 for none)")
    add_compute_arguments(sh)
    sh.set_defaults(func=cmd_fit_sh)

    csd = models.add_parser(
        "csd", help="constrained spherical deconvolution: fODF SH (for tracking) and fODF peaks",
        description="Deconvolve one shell with a single-fibre response (estimated from the most anisotropic "
                    "voxels of the mask, or given) under DIPY's non-negativity constraint, batched over voxels; "
                    "the fODF coefficients are DIPY's ConstrainedSphericalDeconvModel's. Peaks as DIPY's "
                    "peaks_from_model on its default sphere.",
        epilog="outputs: FOD (X, Y, Z, n_coeffs) fODF SH; --peaks P (X, Y, Z, 3 x npeaks), directions scaled by\n"
               "their fODF amplitude (MRtrix's layout) in the data-array frame (DIPY's); JSON sidecars; FOD_qc.png\n\n"
               "example:\n  difftract fit csd dwi.nii.gz dwi.bval dwi.bvec --mask mask.nii.gz --out fod.nii.gz "
               "--peaks peaks.nii.gz",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_scan_arguments(csd)
    csd.add_argument("--out", type=Path, required=True, metavar="FOD", help="output fODF SH NIfTI")
    csd.add_argument("--peaks", type=Path, metavar="P", help="also write fODF peaks here")
    add_sh_arguments(csd, default_lmax=8)
    csd.add_argument("--response", default="auto", metavar="auto|L1,L2,L3,S0",
                     help="single-fibre response: estimated (auto) or eigenvalues (mm^2/s) and S0 "
                          "(default: %(default)s)")
    csd.add_argument("--relative-threshold", type=float, default=0.5,
                     help="peaks below this fraction of the largest are dropped (default: %(default)s)")
    csd.add_argument("--min-separation", type=float, default=25.0,
                     help="minimal angle between peaks, degrees (default: %(default)s)")
    csd.add_argument("--npeaks", type=int, default=3, help="peaks per voxel at most (default: %(default)s)")
    add_compute_arguments(csd)
    csd.set_defaults(func=cmd_fit_csd)


def add_sh_arguments(parser: argparse.ArgumentParser, default_lmax: int) -> None:
    parser.add_argument("--lmax", type=int, default=default_lmax, help="maximal even SH order (default: %(default)s)")
    parser.add_argument("--legacy", action="store_true",
                        help="DIPY's legacy descoteaux07 basis (DIPY's and scilpy's default) instead of the "
                             "published one; recorded in the sidecar")
    parser.add_argument("--shell", type=float, default=None, metavar="B",
                        help="b-value of the shell to fit (default: the only or the highest shell)")


def cmd_fit_dti(args: argparse.Namespace) -> int:
    from ..io.maps import save_maps
    from ..io.sidecar import provenance
    from ..reconst.dti import TensorModel
    from ..viz.qc import map_slices

    check_output(args.out_dir, args.force, inputs=scan_inputs(args))  # a directory, written whole by save_maps
    if args.method != "qcg" and (args.weights or args.select_six):
        raise ConfigError("--weights and --select-six apply only to --method qcg")
    options = compute_options(args)
    dwi = load_scan(args)
    start = time.perf_counter()
    with memory_guard(f"the DTI {args.method.upper()} fit", options["device"], options["chunk_size"]):
        if args.method == "qcg":
            fit = _fit_qcg(args, dwi, options["device"])
        else:
            fit = TensorModel(dwi.gtab, fit_method=args.method.upper()).fit(dwi.signal, dwi.mask, **options)
    seconds = time.perf_counter() - start
    n = int(fit.mask.sum())
    dtype = "float32" if args.method == "qcg" else options["dtype"]   # the network runs in float32
    record = provenance("fit dti", {**fit.params, "tensor_format": args.tensor_format,
                                    "device": str(options["device"]), "dtype": dtype},
                        inputs=scan_inputs(args) + ([args.weights] if args.weights else []))

    def qc(directory):
        map_slices([("FA", fit.fa, {"vmin": 0, "vmax": 1}), ("colour FA", fit.color_fa, {})],
                   directory / "qc_dti.png", mask=fit.mask, title=f"DTI {fit.params['fit_method']}: {args.dwi.name}")

    save_maps(args.out_dir, fit.maps(args.tensor_format, dwi.affine), dwi.affine, record, args.force, extra=qc)
    fa = fit.fa[fit.mask]
    print(f"DTI {fit.params['fit_method']} of {n} voxels in {seconds:.2f} s ({n / max(seconds, 1e-9):,.0f} voxels/s on "
          f"{options['device']}, {dtype}) -> {args.out_dir}")
    if n:
        print(f"  FA median {np.median(fa):.3f} (5-95%: {np.percentile(fa, 5):.3f}-{np.percentile(fa, 95):.3f}), "
              f"MD median {np.median(fit.md[fit.mask]):.3g} mm^2/s")
    return 0


def _fit_qcg(args: argparse.Namespace, dwi, device):
    """The QCG-DTI fit of ``dwi``: its six DWIs, or six selected from many."""
    from ..models.qcgdti.predict import QCGTensorModel
    from ..models.qcgdti.schemes import check_six, flexible_six
    from ..reconst.sh import shells

    if dwi.mask is None:
        raise ConfigError("--method qcg needs --mask (intensities are normalised over the brain)")
    bvals, bvecs = np.asarray(dwi.bvals, float), np.asarray(dwi.bvecs, float)
    six = None
    if args.select_six:
        found = shells(bvals)
        shell = float(found[0]) if args.shell is None and len(found) else args.shell
        six = flexible_six(bvals, bvecs, np.random.default_rng(args.seed), shell=shell)
        log.info("selected volumes %s on shell b=%g (mean angle %.1f deg, condition %.2f)",
                 list(six.indices), six.shell, six.mean_angle, six.condition)
    else:
        check_six(bvals, bvecs, where=str(args.bval))
    fit = QCGTensorModel.from_weights(args.weights, device).fit(dwi.signal, bvals, bvecs, dwi.mask, six)
    if six is not None:
        fit.params.update(selection={"rule": "nearest to a rotated DSM6", "shell": six.shell, "seed": args.seed,
                                     "mean_angle_deg": six.mean_angle, "condition": six.condition})
    return fit


def cmd_fit_sh(args: argparse.Namespace) -> int:
    from ..io.atomic import atomic_outputs
    from ..io.nifti import save_nifti
    from ..io.sidecar import provenance
    from ..reconst.sh import SHModel, gfa
    from ..viz.qc import map_slices

    qc = qc_path(args.out)
    outputs = output_files(args.out, qc, sidecars=(args.out,))
    check_outputs(outputs, args.force, inputs=scan_inputs(args))
    options = compute_options(args)
    dwi = load_scan(args)
    model = SHModel(dwi.gtab, lmax=args.lmax, legacy=args.legacy, smooth=args.smooth, shell=args.shell)
    start = time.perf_counter()
    with memory_guard("the SH fit", options["device"], options["chunk_size"]):
        fit = model.fit(dwi.signal, dwi.mask, **options)
    seconds = time.perf_counter() - start
    record = provenance("fit sh", {**model.params, "device": str(options["device"]), "dtype": options["dtype"]},
                        inputs=scan_inputs(args), sh_basis=f"descoteaux07{'_legacy' if args.legacy else ''}")
    with atomic_outputs(outputs, args.force) as stage:
        save_nifti(stage(args.out), fit.coeffs.astype(np.float32), dwi.affine, sidecar=record)
        map_slices([("GFA", gfa(fit.coeffs), {"vmin": 0}), ("c0", fit.coeffs[..., 0], {"vmin": 0})],
                   stage(qc), mask=fit.mask, title=f"SH lmax {model.lmax} (b = {model.shell:g}): {args.dwi.name}")
    n = int(fit.mask.sum())
    print(f"SH lmax {model.lmax} ({fit.coeffs.shape[-1]} coefficients, "
          f"descoteaux07{' legacy' if args.legacy else ''}) of {n} voxels, b = {model.shell:g} "
          f"({len(model.dw_index)} directions), in {seconds:.2f} s -> {args.out}")
    return 0


def _response(text: str):
    if text == "auto":
        return "auto"
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4:
        raise ConfigError(f"--response must be 'auto' or four numbers L1,L2,L3,S0, got {text!r}")
    return np.array(values[:3]), values[3]


def cmd_fit_csd(args: argparse.Namespace) -> int:
    from ..io.atomic import atomic_outputs
    from ..io.nifti import save_nifti
    from ..io.sidecar import provenance
    from ..reconst.csd import CsdModel
    from ..reconst.peaks import check_peak_options, peaks_from_sh
    from ..reconst.sh import gfa
    from ..viz.qc import map_slices

    qc = qc_path(args.out)
    outputs = output_files(args.out, qc, args.peaks, sidecars=(args.out, args.peaks))
    check_outputs(outputs, args.force, inputs=scan_inputs(args))
    check_peak_options(args.relative_threshold, args.min_separation, args.npeaks)
    response = _response(args.response)
    options = compute_options(args)
    dwi = load_scan(args)
    model = CsdModel(dwi.gtab, response=response, lmax=args.lmax, legacy=args.legacy, shell=args.shell)
    start = time.perf_counter()
    with memory_guard(f"the CSD fit (lmax {model.lmax}) and its peaks", options["device"], options["chunk_size"]):
        fit = model.fit(dwi.signal, dwi.mask, **options)
        peaks = peaks_from_sh(fit, relative_peak_threshold=args.relative_threshold,
                              min_separation_angle=args.min_separation, npeaks=args.npeaks, **options)
    seconds = time.perf_counter() - start
    basis = f"descoteaux07{'_legacy' if args.legacy else ''}"
    compute = {"device": str(options["device"]), "dtype": options["dtype"]}
    record = provenance("fit csd", {**fit.params, **compute}, inputs=scan_inputs(args), sh_basis=basis)
    first = peaks.dirs[..., 0, :]
    strength = peaks.values[..., 0] / max(float(np.percentile(peaks.values[..., 0][fit.mask], 99)), 1e-12) \
        if fit.mask.any() else peaks.values[..., 0]
    with atomic_outputs(outputs, args.force) as stage:
        save_nifti(stage(args.out), fit.coeffs.astype(np.float32), dwi.affine, sidecar=record)
        if args.peaks:
            peaks_record = provenance(
                "fit csd", {**peaks.params, **compute}, inputs=scan_inputs(args), sh_basis=basis,
                layout="(X, Y, Z, 3 x npeaks) as MRtrix's peaks images, directions scaled by their fODF "
                       "amplitude, but in the data-array frame (as DIPY's peaks), zeros where no peak")
            save_nifti(stage(args.peaks), peaks.to_volume(scaled=True), dwi.affine, sidecar=peaks_record)
        map_slices([("fODF GFA", gfa(fit.coeffs), {"vmin": 0}),
                    ("first peak (|x|,|y|,|z|) x amplitude", np.abs(first) * np.clip(strength, 0, 1)[..., None], {}),
                    ("number of peaks", peaks.count.astype(float), {"vmin": 0, "vmax": args.npeaks})],
                   stage(qc), mask=fit.mask, title=f"CSD lmax {model.lmax} (b = {model.shell:g}): {args.dwi.name}")
    n = int(fit.mask.sum())
    counts = peaks.count[fit.mask]
    response = fit.params["response"]
    print(f"CSD lmax {model.lmax} ({basis}) of {n} voxels, b = {model.shell:g}, in {seconds:.2f} s -> {args.out}")
    print(f"  response evals {np.array2string(np.array(response['evals']), precision=6)} S0 {response['S0']:.4g}; "
          f"voxels with 1/2/3+ peaks: {(counts == 1).sum()}/{(counts == 2).sum()}/{(counts >= 3).sum()}")
    return 0
