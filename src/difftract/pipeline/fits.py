"""The model fits as pipeline stages: fit a loaded scan, write the maps with sidecars and QC, say what was found.

``difftract fit dti|sh|csd`` and :func:`.run.run_subject` both call these, so a map made
by a run is the file the single command makes. Each takes the scan already loaded (a
:class:`~difftract.io.dwi.DWI`: read and validated once), writes atomically (nothing is
left by a failure; an existing output needs ``force``), and returns the fit, so the next
stage can use it without reading the file back.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..io.gradients import B0_THRESHOLD
from ..io.atomic import atomic_outputs, check_output, check_outputs
from ..io.nifti import check_nifti_name
from ..io.sidecar import data_stem, provenance, sidecar_path
from ..reconst.sh import DEFAULT_SMOOTH
from .compute import Compute, memory_guard
from ..console import Console

log = logging.getLogger("difftract")


def scan_inputs(dwi) -> list[Path]:
    """The files a loaded scan came from, for the sidecars."""
    return [Path(dwi.files[k]) for k in ("dwi", "bval", "bvec", "mask") if dwi.files.get(k) is not None]


def qc_path(output: Path) -> Path:
    """``out/SH.nii.gz`` -> ``out/SH_qc.png``."""
    return Path(output).with_name(f"{data_stem(output)}_qc.png")


def fit_dti(dwi, out_dir: Path, *, method: str = "wls", tensor_format: str = "dipy", weights: Path | None = None,
            select_six: bool = False, shell: float | None = None, seed: int = 0, fa_correction: bool = False,
            compute: Compute = Compute(), console: Console = Console(), force: bool = False,
            equivalent: str | None = None):
    """Fit the tensor (WLS, OLS, or the QCG-DTI network) and write ``out_dir`` (maps, sidecars, ``qc_dti.png``).

    ``fa_correction`` replaces each voxel's FA by the noise-corrected FA of the WLS fit of the
    b0 and six DWIs (:mod:`difftract.reconst.fa_bias`); WLS and OLS need a scan of exactly
    those seven volumes.

    Returns the :class:`~difftract.reconst.dti.TensorFit` (or QCG-DTI's fit, with the same maps).
    """
    from ..io.maps import save_maps
    from ..reconst.dti import TensorModel
    from ..viz.qc import map_slices

    out_dir = Path(out_dir)
    check_output(out_dir, force, inputs=scan_inputs(dwi))      # a directory, written whole by save_maps
    if method not in ("wls", "ols", "qcg"):
        raise ConfigError(f"unknown DTI method {method!r}; expected wls, ols or qcg")
    if method != "qcg" and (weights or select_six):
        raise ConfigError("--weights and --select-six apply only to --method qcg")
    if fa_correction:
        _check_fa_correction(dwi, method)
    options = compute.fit_options(console.bars)
    start = time.perf_counter()
    with memory_guard(f"the DTI {method.upper()} fit", options["device"], options["chunk_size"]):
        if method == "qcg":
            fit = _fit_qcg(dwi, weights, select_six, shell, seed, options["device"], fa_correction)
        else:
            fit = TensorModel(dwi.gtab, fit_method=method.upper()).fit(dwi.signal, dwi.mask, **options)
            if fa_correction:
                fit = _correct_fa(fit, dwi)
    seconds = time.perf_counter() - start
    n = int(fit.mask.sum())
    dtype = "float32" if method == "qcg" else options["dtype"]   # the network runs in float32
    record = provenance("fit dti", {**fit.params, "tensor_format": tensor_format,
                                    "device": str(options["device"]), "dtype": dtype},
                        inputs=scan_inputs(dwi) + ([weights] if weights else []), equivalent=equivalent)

    def qc(directory):
        map_slices([("FA", fit.fa, {"vmin": 0, "vmax": 1}), ("colour FA", fit.color_fa, {})],
                   directory / "qc_dti.png", mask=fit.mask,
                   title=f"DTI {fit.params['fit_method']}: {Path(dwi.files['dwi']).name}")

    save_maps(out_dir, fit.maps(tensor_format, dwi.affine), dwi.affine, record, force, extra=qc)
    console.say(f"DTI {fit.params['fit_method']} of {n} voxels in {seconds:.2f} s ({n / max(seconds, 1e-9):,.0f} "
                f"voxels/s on {options['device']}, {dtype}) -> {out_dir}")
    if n:
        fa = fit.fa[fit.mask]
        console.say(f"  FA median {np.median(fa):.3f} (5-95%: {np.percentile(fa, 5):.3f}-{np.percentile(fa, 95):.3f}), "
                    f"MD median {np.median(fit.md[fit.mask]):.3g} mm^2/s")
    return fit


def scan_noise(dwi) -> float:
    """The noise standard deviation of ``dwi``'s b0s, for ``--fa-correction``."""
    from ..reconst.fa_bias import noise_sigma
    from ..reconst.voxels import volume_array

    try:
        return noise_sigma(volume_array(dwi.signal, np.flatnonzero(np.asarray(dwi.bvals, float) <= B0_THRESHOLD)),
                           dwi.mask)
    except ConfigError as err:
        raise ConfigError(f"{dwi.files['dwi']}: --fa-correction cannot estimate the noise: {err}") from None


def _check_fa_correction(dwi, method: str) -> None:
    """Refuse ``--fa-correction`` before any fitting where it cannot run: no mask, or (WLS, OLS) a scan
    that is not one b0 and six DWIs."""
    from ..reconst.fa_bias import check_six_dwis

    if dwi.mask is None:
        raise ConfigError("--fa-correction needs --mask (the noise is estimated in the brain)")
    if method != "qcg":
        try:
            check_six_dwis(dwi.bvals)
        except ConfigError as err:
            raise ConfigError(f"{dwi.files['bval']}: --fa-correction with --method {method}: {err}; with more "
                              "DWIs, use --method qcg --select-six") from None


def _correct_fa(fit, dwi):
    """``fit``, the WLS or OLS fit of one b0 and six DWIs, with its noise-corrected FA (eigenvectors, MD kept)."""
    from ..reconst.fa_bias import fa_corrected, with_corrected_fa

    return with_corrected_fa(fit, *fa_corrected(fit, dwi.bvals, dwi.bvecs, scan_noise(dwi)))


def _fit_qcg(dwi, weights, select_six: bool, shell: float | None, seed: int, device, fa_correction: bool = False):
    """The QCG-DTI fit of ``dwi``: its six DWIs, or six selected from many."""
    from ..models.qcgdti.predict import QCGTensorModel
    from ..models.qcgdti.schemes import check_six, flexible_six
    from ..reconst.sh import shells

    if dwi.mask is None:
        raise ConfigError("--method qcg needs --mask (intensities are normalised over the brain)")
    bvals, bvecs = np.asarray(dwi.bvals, float), np.asarray(dwi.bvecs, float)
    six = None
    if select_six:
        found = shells(bvals)
        shell = float(found[0]) if shell is None and len(found) else shell
        six = flexible_six(bvals, bvecs, np.random.default_rng(seed), shell=shell)
        log.info("selected volumes %s on shell b=%g (mean angle %.1f deg, condition %.2f)",
                 list(six.indices), six.shell, six.mean_angle, six.condition)
    else:
        check_six(bvals, bvecs, where=str(dwi.files["bval"]))
    sigma = scan_noise(dwi) if fa_correction else None
    fit = QCGTensorModel.from_weights(weights, device).fit(dwi.signal, bvals, bvecs, dwi.mask, six,
                                                           voxel_size=dwi.voxel_sizes, fa_correction=fa_correction,
                                                           sigma=sigma)
    if fit.params["domain_warnings"]:
        log.warning("QCG-DTI: %s is outside the network's training data (%s); its tensors may be biased, "
                    "compare with --method wls", dwi.files["dwi"], "; ".join(fit.params["domain_warnings"]))
    if six is not None:
        fit.params.update(selection={"rule": "nearest to a rotated DSM6", "shell": six.shell, "seed": seed,
                                     "mean_angle_deg": six.mean_angle, "condition": six.condition})
    return fit


def write_sh(out: Path, coeffs: np.ndarray, mask: np.ndarray, dwi, record: dict, title: str,
             force: bool = False) -> Path:
    """Write an SH volume (float32) with its sidecar and ``OUT_qc.png`` (GFA and c0), all or nothing."""
    from ..io.nifti import save_nifti
    from ..reconst.sh import gfa
    from ..viz.qc import map_slices

    out = Path(out)
    qc = qc_path(out)
    with atomic_outputs([out, qc, sidecar_path(out)], force) as stage:
        save_nifti(stage(out), np.asarray(coeffs, dtype=np.float32), dwi.affine, sidecar=record)
        map_slices([("GFA", gfa(coeffs), {"vmin": 0}), ("c0", coeffs[..., 0], {"vmin": 0})],
                   stage(qc), mask=mask, title=title)
    return out


def fit_sh(dwi, out: Path, *, lmax: int = 6, legacy: bool = False, smooth: float = DEFAULT_SMOOTH,
           shell: float | None = None,
           compute: Compute = Compute(), console: Console = Console(), force: bool = False,
           equivalent: str | None = None):
    """Fit the signal SH of one shell (``shell``: default the only or the highest) and write ``out``."""
    from ..reconst.sh import SHModel

    out = check_nifti_name(out)
    check_outputs([out, qc_path(out), sidecar_path(out)], force, inputs=scan_inputs(dwi))
    options = compute.fit_options(console.bars)
    model = SHModel(dwi.gtab, lmax=lmax, legacy=legacy, smooth=smooth, shell=shell)
    start = time.perf_counter()
    with memory_guard("the SH fit", options["device"], options["chunk_size"]):
        fit = model.fit(dwi.signal, dwi.mask, **options)
    seconds = time.perf_counter() - start
    record = provenance("fit sh", {**model.params, "device": str(options["device"]), "dtype": options["dtype"]},
                        inputs=scan_inputs(dwi), sh_basis=f"descoteaux07{'_legacy' if legacy else ''}",
                        equivalent=equivalent)
    write_sh(out, fit.coeffs, fit.mask, dwi, record, force=force,
             title=f"SH lmax {model.lmax} (b = {model.shell:g}): {Path(dwi.files['dwi']).name}")
    console.say(f"SH lmax {model.lmax} ({fit.coeffs.shape[-1]} coefficients, descoteaux07{' legacy' if legacy else ''}) "
                f"of {int(fit.mask.sum())} voxels, b = {model.shell:g} ({len(model.dw_index)} directions), "
                f"in {seconds:.2f} s -> {out}")
    return fit


def parse_response(text: str):
    """``auto`` or ``L1,L2,L3,S0`` -> what :class:`~difftract.reconst.csd.CsdModel` takes."""
    if text == "auto":
        return "auto"
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4:
        raise ConfigError(f"--response must be 'auto' or four numbers L1,L2,L3,S0, got {text!r}")
    return np.array(values[:3]), values[3]


def fit_csd(dwi, out: Path, *, peaks_out: Path | None = None, lmax: int = 8, legacy: bool = False,
            shell: float | None = None, response: str = "auto", relative_threshold: float = 0.5,
            min_separation: float = 25.0, npeaks: int = 3, compute: Compute = Compute(),
            console: Console = Console(), force: bool = False, equivalent: str | None = None):
    """Fit CSD fODFs (and their peaks) and write ``out`` (and ``peaks_out``); returns the fit."""
    from ..io.nifti import save_nifti
    from ..reconst.csd import CsdModel
    from ..reconst.peaks import check_peak_options, peaks_from_sh
    from ..reconst.sh import gfa
    from ..viz.qc import map_slices

    out = check_nifti_name(out)
    if peaks_out is not None:
        check_nifti_name(peaks_out)
    qc = qc_path(out)
    outputs = [out, qc, sidecar_path(out)] + ([Path(peaks_out), sidecar_path(peaks_out)] if peaks_out else [])
    check_outputs(outputs, force, inputs=scan_inputs(dwi))
    check_peak_options(relative_threshold, min_separation, npeaks)
    options = compute.fit_options(console.bars)
    model = CsdModel(dwi.gtab, response=parse_response(response), lmax=lmax, legacy=legacy, shell=shell)
    start = time.perf_counter()
    with memory_guard(f"the CSD fit (lmax {model.lmax}) and its peaks", options["device"], options["chunk_size"]):
        fit = model.fit(dwi.signal, dwi.mask, **options)
        peaks = peaks_from_sh(fit, relative_peak_threshold=relative_threshold,
                              min_separation_angle=min_separation, npeaks=npeaks, **options)
    seconds = time.perf_counter() - start
    basis = f"descoteaux07{'_legacy' if legacy else ''}"
    settings = {"device": str(options["device"]), "dtype": options["dtype"]}
    record = provenance("fit csd", {**fit.params, **settings}, inputs=scan_inputs(dwi), sh_basis=basis,
                        equivalent=equivalent)
    first = peaks.dirs[..., 0, :]
    strength = peaks.values[..., 0] / max(float(np.percentile(peaks.values[..., 0][fit.mask], 99)), 1e-12) \
        if fit.mask.any() else peaks.values[..., 0]
    with atomic_outputs(outputs, force) as stage:
        save_nifti(stage(out), fit.coeffs.astype(np.float32), dwi.affine, sidecar=record)
        if peaks_out:
            peaks_record = provenance(
                "fit csd", {**peaks.params, **settings}, inputs=scan_inputs(dwi), sh_basis=basis, equivalent=equivalent,
                layout="(X, Y, Z, 3 x npeaks) as MRtrix's peaks images, directions scaled by their fODF "
                       "amplitude, but in the data-array frame (as DIPY's peaks), zeros where no peak")
            save_nifti(stage(peaks_out), peaks.to_volume(scaled=True), dwi.affine, sidecar=peaks_record)
        map_slices([("fODF GFA", gfa(fit.coeffs), {"vmin": 0}),
                    ("first peak (|x|,|y|,|z|) x amplitude", np.abs(first) * np.clip(strength, 0, 1)[..., None], {}),
                    ("number of peaks", peaks.count.astype(float), {"vmin": 0, "vmax": npeaks})],
                   stage(qc), mask=fit.mask, title=f"CSD lmax {model.lmax} (b = {model.shell:g}): "
                                                   f"{Path(dwi.files['dwi']).name}")
    n = int(fit.mask.sum())
    counts = peaks.count[fit.mask]
    found = fit.params["response"]
    console.say(f"CSD lmax {model.lmax} ({basis}) of {n} voxels, b = {model.shell:g}, in {seconds:.2f} s -> {out}")
    console.say(f"  response evals {np.array2string(np.array(found['evals']), precision=6)} S0 {found['S0']:.4g}; "
                f"voxels with 1/2/3+ peaks: {(counts == 1).sum()}/{(counts == 2).sum()}/{(counts >= 3).sum()}")
    return fit
