"""What a learned model (QCG-DTI, DDTracking) was trained on, and whether a scan lies inside it.

A learned model is only as good as what it was shown: outside its training shells, SNR,
direction counts or voxel sizes it extrapolates, and nothing says so but a warning.
:func:`stream_domain` and :func:`subjects_domain` describe the training data as the weights'
``meta["domain"]``; :func:`check_domain` compares a scan with it and returns one message per
setting outside (``fit dti --method qcg``, ``track`` and ``run`` warn in one line and record
them in the sidecar). Each model records what it reads: QCG-DTI the shells of its six DWIs,
DDTracking the one shell its SH input is fitted on and that shell's direction count.

The SNR of a scan is estimated from its b0 volumes (:func:`estimate_snr`): the spread of
repeated b0s in each brain voxel against the median b0 there, as the phantoms define it
(b0 signal over the noise's standard deviation). With one b0 it cannot be estimated, and
is not checked.

The noise model is read from the background outside the head (:func:`estimate_coils`).
It matters as much as the SNR: at the same b0 SNR the magnitude floor of a 16-coil
root-sum-of-squares lowers a full shell's white-matter FA by 0.07 at b = 1000 and 0.31 at
b = 3000, where Rician noise (one coil) lowers it by 0.00 and 0.02 (a randomised phantom at
SNR 20), and a learned correction cannot tell the two apart from the brain alone.
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln

from ..io.gradients import B0_THRESHOLD
from ..reconst.fa_bias import repeat_sigma

SHELL_MARGIN = 50.0        # s/mm^2 beyond the training shells still counted inside
SNR_MARGIN = 0.8           # a scan's SNR estimate may be 20% under the training minimum
VOXEL_MARGIN = 0.05        # mm
MIN_BACKGROUND = 1000      # background voxels a noise-model estimate needs
BACKGROUND_GAP = 3         # voxels between the brain mask and the background read
MAX_COILS = 64


def _span(values) -> list[float]:
    values = np.asarray(values, dtype=float).ravel()
    return [float(values.min()), float(values.max())]


def stream_domain(phantom, presets=None) -> dict:
    """The domain of streamed training phantoms: a :class:`~difftract.phantom.PhantomConfig` template and the
    presets its subjects alternate between (default: the template's)."""
    if phantom.randomize:
        a, t = phantom.acquisition_ranges, phantom.tissue_ranges
        domain = {"bvals": list(map(float, a.bvals)), "nb0": list(map(int, a.nb0)),
                  "ndirs": list(map(int, a.ndirs)),
                  "snr": None if phantom.snr is None else list(map(float, a.snr)),
                  **noise_model(a.rician_probability, a.coils),
                  "tissue": {k: list(map(float, getattr(t, k))) for k in
                             ("d_par", "perp_ratio", "f_intra", "kappa", "f_free", "d_background", "d_csf")}}
        domain["voxel_size_mm"] = (list(map(float, a.voxel_size)) if phantom.voxel_size is None
                                   else [float(phantom.voxel_size)] * 2)
    else:
        counts = np.atleast_1d(phantom.ndirs)
        domain = {"bvals": _span(phantom.bvals), "nb0": [int(phantom.nb0)] * 2,
                  "ndirs": [int(counts.min()), int(counts.max())],
                  "snr": None if phantom.snr is None else [float(phantom.snr)] * 2,
                  "voxel_size_mm": [float(phantom.voxel_size or 2.0)] * 2}
    domain["presets"] = list(presets or (phantom.preset,))
    return domain


def noise_model(rician_probability: float, coils: tuple[int, int]) -> dict:
    """The noise of randomised subjects: ``noise`` in words (Rician, non-central chi of a
    root-sum-of-squares, or both) and ``coils``, the range of receive-coil counts (1: Rician)."""
    lo, hi = int(coils[0]), int(coils[1])
    if rician_probability >= 1.0:
        return {"noise": "rician", "coils": [1, 1]}
    chi = f"non-central chi ({lo}-{hi} coils)"
    if rician_probability <= 0.0:
        return {"noise": chi, "coils": [lo, hi]}
    return {"noise": f"rician or {chi}", "coils": [1, hi]}


def intersect_domains(domain: dict, start: dict | None) -> dict:
    """The domain of a network fine-tuned in part on ``domain`` from one trained on ``start``.

    Its frozen layers were trained on ``start`` only, so each range of ``start`` bounds it:
    a range both hold is narrowed to their overlap (empty, so every scan is warned about,
    where they do not meet), and a range only ``start`` holds, or one that ``domain`` leaves
    open (``None``), is ``start``'s. ``start`` is kept whole under ``"init_domain"``.
    """
    if not start:
        return domain

    def is_range(v) -> bool:
        return isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v)

    out = dict(domain)
    for key, (lo, hi) in ((k, v) for k, v in start.items() if is_range(v)):
        mine = domain.get(key)
        out[key] = [max(mine[0], lo), min(mine[1], hi)] if is_range(mine) else [lo, hi]
    out["init_domain"] = start
    return out


def subjects_domain(bvals, voxel_sizes, ndirs=None, snr=None) -> dict:
    """The domain of training subject folders: their shells and voxel sizes.

    ``bvals``: per subject, the b-values the model reads; ``ndirs`` the direction counts
    it read, and ``snr`` the subjects' SNRs where known (a simulated phantom's provenance,
    :func:`provenance_snr`): the SNR is unknown (not checked) unless every subject has one.
    """
    shells = np.concatenate([b[b > B0_THRESHOLD] for b in map(np.asarray, bvals)])
    domain = {"bvals": _span(shells), "voxel_size_mm": _span(voxel_sizes), "snr": None}
    if ndirs is not None:
        domain["ndirs"] = [int(min(ndirs)), int(max(ndirs))]
    if snr is not None and len(snr) and all(v is not None for v in snr):
        domain["snr"] = _span(snr)
    return domain


def simulated(directory) -> dict | None:
    """How a simulated subject was made (``params`` and ``summary`` of its ``dwi.json``), or None."""
    import json
    from pathlib import Path

    try:
        record = json.loads((Path(directory) / "dwi.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("command") != "simulate":
        return None
    return {"params": record.get("params") or {}, "summary": record.get("summary") or {}}


def provenance_snr(made: dict | None) -> float | None:
    """The SNR a simulated subject was made with (its :func:`simulated` record), or None."""
    value = made["summary"].get("snr") if made else None
    return float(value) if isinstance(value, (int, float)) else None


def provenance_tissue(made: list[dict | None]) -> str:
    """The tissue of training subjects (their :func:`simulated` records) in words: the simulator's fixed
    default, randomised, or unknown."""
    if not made or any(m is None for m in made):
        return "unknown (not all subjects were simulated)"
    if any(m["params"].get("randomize") for m in made):
        return "randomised (the simulator's tissue ranges)"
    return "the simulator's default tissue, not randomised (bundle FA about 0.76)"


def estimate_snr(b0s: np.ndarray, mask: np.ndarray) -> float | None:
    """b0 SNR from repeated b0 volumes ``(X, Y, Z, k)``: median b0 / noise std over the mask; None for k < 2."""
    b0s = np.asarray(b0s, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if b0s.ndim != 4 or b0s.shape[-1] < 2 or not mask.any():
        return None
    sigma = repeat_sigma(b0s, mask)
    return float(np.median(b0s[mask].mean(axis=1)) / sigma) if sigma > 0 else None


def scan_snr(signal, bvals, mask) -> float | None:
    """:func:`estimate_snr` of a scan's b0 volumes (``signal`` an array or a :class:`~difftract.reconst.voxels.MaskedSignal`)."""
    from ..reconst.voxels import volume_array

    b0s = np.flatnonzero(np.asarray(bvals, float) <= B0_THRESHOLD)
    if len(b0s) < 2 or mask is None:
        return None
    return estimate_snr(volume_array(signal, b0s), mask)


def chi_ratio(coils) -> np.ndarray:
    """Mean over standard deviation of pure-noise magnitude from ``coils`` receive channels (root-sum-of-squares).

    The magnitude is sigma times a chi variable of 2N degrees of freedom, whose mean is
    ``sqrt(2) Gamma(N + 1/2) / Gamma(N)`` and second moment ``2N``: the ratio is 1.91 for one
    coil (Rayleigh, the background of Rician data), 3.94 for 4, 7.97 for 16, whatever sigma.
    """
    n = np.asarray(coils, dtype=float)
    mean = np.sqrt(2.0) * np.exp(gammaln(n + 0.5) - gammaln(n))
    return mean / np.sqrt(2.0 * n - mean ** 2)


def estimate_coils(b0s: np.ndarray, mask: np.ndarray) -> int | None:
    """The effective receive-coil count of a scan's noise, from the background of its b0 volumes ``(X, Y, Z, k)``.

    The background is every voxel more than ``BACKGROUND_GAP`` voxels outside the brain
    ``mask`` whose b0s are not all zero; its mean over its standard deviation, matched to
    :func:`chi_ratio`, gives the count (1: Rician). None where there are fewer than
    ``MIN_BACKGROUND`` such voxels (a masked or zero-filled background, a tight field of
    view). Ghosts or anything else with signal in the background reads as fewer coils, and
    so does a noise level that varies over the image (parallel imaging): a mixture of
    sigmas has a larger spread for its mean.
    """
    from scipy.ndimage import binary_dilation

    b0s = np.asarray(b0s, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if b0s.ndim != 4 or b0s.shape[:3] != mask.shape:
        return None
    outside = ~binary_dilation(mask, iterations=BACKGROUND_GAP) & (b0s != 0).any(axis=-1)
    if outside.sum() < MIN_BACKGROUND:
        return None
    values = b0s[outside].ravel()
    if values.std() <= 0:
        return None
    counts = np.arange(1, MAX_COILS + 1)
    return int(counts[np.argmin(np.abs(chi_ratio(counts) - values.mean() / values.std()))])


def scan_coils(signal, bvals, mask) -> int | None:
    """:func:`estimate_coils` of a scan's b0 volumes; None for a :class:`~difftract.reconst.voxels.MaskedSignal`
    (it holds no background) or a scan without a b0."""
    b0s = np.flatnonzero(np.asarray(bvals, float) <= B0_THRESHOLD)
    if not isinstance(signal, np.ndarray) or len(b0s) == 0 or mask is None:
        return None
    return estimate_coils(signal[..., b0s], mask)


def scan_report(domain: dict | None, signal, bvals, mask, read_bvals: np.ndarray, voxel_size=None,
                ndirs: int | None = None) -> dict:
    """How a scan compares with a model's training ``domain``, as its sidecar records it.

    ``training_domain``, ``b0_snr_estimate`` (:func:`scan_snr`), ``noise_coils_estimate``
    (:func:`scan_coils`) and ``domain_warnings`` (:func:`check_domain` of ``read_bvals``, the
    b-values the model reads, ``voxel_size`` and ``ndirs``). The SNR and the coil count are
    estimated only where the domain has a range to hold them against.
    """
    snr = scan_snr(signal, bvals, mask) if domain and domain.get("snr") else None
    coils = scan_coils(signal, bvals, mask) if domain and domain.get("coils") else None
    return {"training_domain": domain, "b0_snr_estimate": snr, "noise_coils_estimate": coils,
            "domain_warnings": check_domain(domain, read_bvals, voxel_size, snr, ndirs=ndirs, coils=coils)}


def check_domain(domain: dict | None, bvals: np.ndarray, voxel_size: np.ndarray | None = None,
                 snr: float | None = None, ndirs: int | None = None, coils: int | None = None) -> list[str]:
    """One message per property of the scan outside the training ``domain`` (empty: inside, or no domain).

    ``ndirs`` (checked when the domain has ``ndirs``): the directions the model reads; fewer
    than in training is outside (the SH input is noisier or ill-posed), more is not.
    ``coils`` (checked when the domain has ``coils``): :func:`estimate_coils` of the scan.
    """
    if not domain:
        return []
    out = []
    dw = np.asarray(bvals, dtype=float)
    dw = dw[dw > B0_THRESHOLD]
    lo, hi = domain.get("bvals", (None, None))
    if lo is not None and dw.size and (dw.min() < lo - SHELL_MARGIN or dw.max() > hi + SHELL_MARGIN):
        out.append(f"b-values {dw.min():g}-{dw.max():g} s/mm^2 outside the training shells {lo:g}-{hi:g}")
    span = domain.get("ndirs")
    if span and ndirs is not None and ndirs < span[0]:
        out.append(f"{ndirs} diffusion directions, fewer than the training minimum {span[0]}")
    span = domain.get("voxel_size_mm")
    if span and voxel_size is not None:
        v = np.asarray(voxel_size, dtype=float)
        if v.min() < span[0] - VOXEL_MARGIN or v.max() > span[1] + VOXEL_MARGIN:
            out.append(f"voxel size {v.min():.3g}-{v.max():.3g} mm outside the training {span[0]:g}-{span[1]:g} mm")
    span = domain.get("snr")
    if span and snr is not None:
        if snr < span[0] * SNR_MARGIN:
            out.append(f"b0 SNR about {snr:.0f}, under the training minimum {span[0]:g}")
        elif snr > span[1] / SNR_MARGIN:
            out.append(f"b0 SNR about {snr:.0f}, above the training maximum {span[1]:g} (WLS on more "
                       "directions may serve better)")
    span = domain.get("coils")
    if span and coils is not None and not span[0] <= coils <= span[1]:
        trained = "Rician noise (one coil)" if span == [1, 1] else f"noise of {span[0]}-{span[1]} coils"
        out.append(f"background noise like a {coils}-coil root-sum-of-squares (its magnitude floor biases FA "
                   f"and MD); the training had {trained}")
    return out
