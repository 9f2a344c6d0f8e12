"""``difftract fit dti|sh|csd``: fitted maps as NIfTI, with sidecars and a QC picture."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..io.atomic import check_output, check_outputs
from .common import add_compute_arguments, nifti_output, add_scan_arguments, compute_of, load_scan, output_files, scan_inputs

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

--fa-correction (a fit of one b0 and six DWIs: --method qcg, or wls/ols on a seven-volume scan)
removes the noise bias of FA: it simulates this scan's seven volumes with Rician noise at the
noise level of its b0s (repeated b0s: their spread; one: its second differences), and maps each
voxel's fitted FA to the true FA whose mean fit it is. Means over regions are then unbiased;
single voxels are noisier, and isotropic voxels read about 0.1. The sidecar records the noise.
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
    dti.add_argument("--fa-correction", action="store_true",
                     help="replace each voxel's FA by the noise-corrected FA of the fit of one b0 and six DWIs "
                          "(Monte-Carlo, see below): unbiased per true-FA bin, noisier per voxel")
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
    sh.add_argument("--out", type=nifti_output, required=True, metavar="SH", help="output NIfTI")
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
    csd.add_argument("--out", type=nifti_output, required=True, metavar="FOD", help="output fODF SH NIfTI")
    csd.add_argument("--peaks", type=nifti_output, metavar="P", help="also write fODF peaks here")
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
    from ..pipeline import Console, fit_dti

    check_output(args.out_dir, args.force, inputs=scan_inputs(args))
    compute = compute_of(args)
    fit_dti(load_scan(args), args.out_dir, method=args.method, tensor_format=args.tensor_format, weights=args.weights,
            select_six=args.select_six, shell=args.shell, seed=args.seed, fa_correction=args.fa_correction,
            compute=compute,
            console=Console(quiet=args.quiet), force=args.force)
    return 0


def cmd_fit_sh(args: argparse.Namespace) -> int:
    from ..pipeline import Console, fit_sh
    from ..pipeline.fits import qc_path

    check_outputs(output_files(args.out, qc_path(args.out), sidecars=(args.out,)), args.force, inputs=scan_inputs(args))
    compute = compute_of(args)
    fit_sh(load_scan(args), args.out, lmax=args.lmax, legacy=args.legacy, smooth=args.smooth, shell=args.shell,
           compute=compute, console=Console(quiet=args.quiet), force=args.force)
    return 0


def cmd_fit_csd(args: argparse.Namespace) -> int:
    from ..pipeline import Console, fit_csd
    from ..pipeline.fits import parse_response, qc_path
    from ..reconst.peaks import check_peak_options

    outputs = output_files(args.out, qc_path(args.out), args.peaks, sidecars=(args.out, args.peaks))
    check_outputs(outputs, args.force, inputs=scan_inputs(args))
    check_peak_options(args.relative_threshold, args.min_separation, args.npeaks)
    parse_response(args.response)
    compute = compute_of(args)
    fit_csd(load_scan(args), args.out, peaks_out=args.peaks, lmax=args.lmax, legacy=args.legacy, shell=args.shell,
            response=args.response, relative_threshold=args.relative_threshold, min_separation=args.min_separation,
            npeaks=args.npeaks, compute=compute, console=Console(quiet=args.quiet), force=args.force)
    return 0
