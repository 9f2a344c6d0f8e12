"""Single-fibre response function for constrained spherical deconvolution.

The response is DIPY's single-shell single-tissue one (``response_from_mask_ssst``): a
prolate tensor whose eigenvalues are ``(l1, l2, l2)``, the means over a region of the
largest and second largest eigenvalues of a WLS DTI fit (:mod:`difftract.reconst.dti`), and
``S0``, the mean of every b0 value in the region.

The region differs from DIPY's ``auto_response_ssst``, whose cube of radius 10 voxels
around the volume centre can miss the white matter altogether: here it is every voxel
of the (brain) mask with FA > 0.7, and when fewer than 100 voxels pass, the threshold is
lowered step by step (0.6, 0.5, ... down to 0.3) with a note saying which one was used.
Without a mask, the voxels whose mean b0 is above a fifth of its 99th percentile stand
for the brain (background noise has a high FA and must not be taken for white matter).
On a multi-shell scan only the b0 volumes and the one shell given to CSD are used.
"""

from __future__ import annotations

import logging

import numpy as np
from dipy.core.gradients import GradientTable, gradient_table

from ..errors import ConfigError
from ..io.gradients import B0_THRESHOLD
from .dti import TensorModel
from .sh import select_shell
from .tensor import fractional_anisotropy
from .voxels import MaskedSignal, masked_rows, row_means, take_volumes, unmask

log = logging.getLogger("difftract")

FA_THRESHOLD = 0.7      # DIPY's default for response voxels
FA_FLOOR = 0.3          # lowest threshold tried before giving up on "enough" voxels
FA_STEP = 0.1
MIN_VOXELS = 100
SIGNAL_FRACTION = 0.2   # without a mask: b0 above this fraction of its 99th percentile


def single_shell(gtab: GradientTable, shell: float | None = None,
                 b0_threshold: float = B0_THRESHOLD) -> tuple[np.ndarray, GradientTable]:
    """Indices of the b0 volumes followed by one shell's volumes, and their gradient table."""
    bvals = np.asarray(gtab.bvals, dtype=np.float64)
    b0 = np.flatnonzero(bvals <= b0_threshold)
    if b0.size == 0:
        raise ConfigError(f"the scan has no b0 volume (b <= {b0_threshold:g}); CSD needs one for its response")
    keep = np.sort(np.r_[b0, select_shell(gtab, shell, b0_threshold)])
    sub = gradient_table(bvals[keep], bvecs=np.asarray(gtab.bvecs, dtype=np.float64)[keep],
                         b0_threshold=b0_threshold)
    return keep, sub


def check_response(response) -> tuple[np.ndarray, float]:
    """Validate a user-given response ``(evals, S0)``; DIPY's ``((evals, S0), ratio)`` is accepted too."""
    try:
        if isinstance(response[0], (tuple, list)) and len(response[0]) == 2:
            response = response[0]          # the output of DIPY's auto_response_ssst / response_from_mask_ssst
        evals, S0 = np.asarray(response[0], dtype=np.float64).reshape(-1), float(response[1])
    except (TypeError, ValueError, IndexError):
        raise ConfigError(f"a response must be (evals (3,), S0), got {response!r}") from None
    if evals.shape != (3,) or not np.all(np.isfinite(evals)) or np.any(evals <= 0):
        raise ConfigError(f"response eigenvalues must be 3 finite positive numbers, got {evals}")
    if not (np.isfinite(S0) and S0 > 0):
        raise ConfigError(f"response S0 must be a finite positive number, got {S0}")
    return evals, S0


def signal_mask(gtab: GradientTable, data: np.ndarray | MaskedSignal) -> np.ndarray:
    """Voxels whose mean b0 exceeds a fifth of its 99th percentile: a crude brain mask, so
    that the high FA of pure-noise background voxels never picks the response."""
    b0, held = row_means(data, None, np.flatnonzero(gtab.b0s_mask))
    b0 = unmask(b0, held)
    finite = np.isfinite(b0) & (b0 > 0)
    if not finite.any():
        return finite
    return finite & (b0 > SIGNAL_FRACTION * np.percentile(b0[finite], 99))


def response_region(gtab: GradientTable, data: np.ndarray | MaskedSignal, mask: np.ndarray | None = None, *,
                    fa_threshold: float = FA_THRESHOLD, min_voxels: int = MIN_VOXELS,
                    fa_floor: float = FA_FLOOR) -> tuple[np.ndarray, float]:
    """Voxels to estimate the response from: FA above a threshold inside ``mask``.

    ``gtab`` and ``data`` must already be single-shell (see :func:`single_shell`). With
    fewer than ``min_voxels`` voxels above ``fa_threshold`` the threshold is lowered by
    0.1 down to ``fa_floor``; if even then fewer remain, those are used (with a warning
    in the log) as long as there is one. Voxels whose mean b0 is not positive never count.

    Returns
    -------
    region : ndarray of bool, (X, Y, Z)
    threshold : float
        The FA threshold that was used.
    """
    if not 0.0 < fa_floor <= fa_threshold < 1.0:
        raise ConfigError(f"need 0 < fa_floor <= fa_threshold < 1, got {fa_floor} and {fa_threshold}")
    spatial = data.shape[:-1]
    if mask is None:
        mask = signal_mask(gtab, data)
        log.info("no mask given for the response estimate; using the %d voxels with a mean b0 above %g of "
                 "its 99th percentile (pass a brain mask to choose)", int(mask.sum()), SIGNAL_FRACTION)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != spatial:
        raise ValueError(f"mask shape {mask.shape} does not match the data grid {spatial}")
    b0, _ = row_means(data, mask, np.flatnonzero(gtab.b0s_mask))
    evals = TensorModel(gtab).fit(data, mask, progress=False).evals[mask]   # chunked: no copy of the data
    fa = np.where(b0 > 0, fractional_anisotropy(evals).numpy(), 0.0)

    ladder = [fa_threshold]                     # 0.7, 0.6, ..., fa_floor
    while ladder[-1] - FA_STEP > fa_floor + 1e-9:
        ladder.append(round(ladder[-1] - FA_STEP, 6))
    if ladder[-1] > fa_floor:
        ladder.append(fa_floor)
    for threshold in ladder:
        picked = fa > threshold
        if picked.sum() >= min_voxels:
            break
    n = int(picked.sum())
    if n == 0:
        raise ConfigError(f"no voxel of the mask ({int(mask.sum())} voxels) has FA > {fa_floor:g}, so no "
                          "single-fibre response can be estimated; check the mask and gradients, or give "
                          "the response explicitly as (evals, S0)")
    if n < min_voxels:
        log.warning("only %d voxel(s) with FA > %.2g for the response (wanted %d); the estimate may be noisy",
                    n, threshold, min_voxels)
    elif threshold < fa_threshold:
        log.info("fewer than %d voxels with FA > %.2g; the response uses the %d voxels with FA > %.2g",
                 min_voxels, fa_threshold, n, threshold)
    region = np.zeros(spatial, dtype=bool)
    region[mask] = picked
    return region, float(threshold)


def response_from_region(gtab: GradientTable, data: np.ndarray | MaskedSignal,
                         region: np.ndarray) -> tuple[np.ndarray, float]:
    """DIPY's ssst response over ``region``: evals ``(l1, l2, l2)`` and the mean b0 ``S0``."""
    rows, _ = masked_rows(data, np.asarray(region, dtype=bool))
    rows = np.asarray(rows[0:rows.shape[0]])      # the region's voxels only: a few thousand
    if len(rows) == 0:
        raise ConfigError("the response region is empty")
    top = TensorModel(gtab).fit(rows, progress=False).evals[:, :2].mean(axis=0)
    S0 = float(np.mean(rows[:, np.asarray(gtab.b0s_mask)]))
    return np.array([top[0], top[1], top[1]]), S0


def estimate_response(gtab: GradientTable, data: np.ndarray | MaskedSignal, mask: np.ndarray | None = None, *,
                      shell: float | None = None, fa_threshold: float = FA_THRESHOLD,
                      min_voxels: int = MIN_VOXELS, b0_threshold: float = B0_THRESHOLD
                      ) -> tuple[np.ndarray, float]:
    """Single-fibre response ``(evals (3,), S0)`` from the anisotropic voxels of ``mask``.

    Uses the b0 volumes and one shell (``shell``; default the only or highest one).
    """
    keep, sub = single_shell(gtab, shell, b0_threshold)
    data = take_volumes(data, keep)
    region, _ = response_region(sub, data, mask, fa_threshold=fa_threshold, min_voxels=min_voxels)
    return response_from_region(sub, data, region)
