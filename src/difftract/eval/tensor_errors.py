"""Errors of an estimated diffusion-tensor field against a reference field.

Both fields are ``(X, Y, Z, 6)`` volumes of the six unique elements in DIPY order (Dxx,
Dxy, Dyy, Dxz, Dyz, Dzz), mm^2/s. Within a mask this reports the tensor error (element
differences), the errors of the scalar maps (FA, MD, AD, RD) and the angle between
principal eigenvectors. Eigenvalues come from :func:`difftract.reconst.tensor.decompose`,
so negative ones are clipped to 0 before the scalar maps, as when fitting.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import ConfigError
from ..reconst.tensor import (axial_diffusivity, decompose, fractional_anisotropy, mean_diffusivity,
                              radial_diffusivity)

_DIAGONAL = [0, 2, 5]       # Dxx, Dyy, Dzz in DIPY order
_OFF_DIAGONAL = [1, 3, 4]   # Dxy, Dxz, Dyz


@dataclass
class TensorErrors:
    """Errors of an estimated tensor field over a mask (means over voxels).

    Attributes
    ----------
    voxels : int
        Voxels in the mask.
    tensor_error : float
        Sum of absolute differences of the 6 unique elements, mm^2/s.
    tensor_error_full : float
        The same over all 9 matrix elements (off-diagonal ones counted twice), mm^2/s.
    fa_mae : float
        Mean absolute FA error.
    md_mae, ad_mae, rd_mae : float
        Mean absolute MD, AD, RD errors, mm^2/s.
    md_mre, ad_mre, rd_mre : float
        Mean relative errors |est - ref| / ref, over voxels where the reference value is
        positive (NaN if none is).
    angle_mean, angle_median : float
        Angle between principal eigenvectors in degrees (sign-invariant, 0 to 90), over
        voxels whose reference FA exceeds ``fa_threshold`` (NaN if none does).
    angle_voxels : int
        Voxels used for the angle.
    fa_threshold : float
        The reference-FA threshold for the angle.
    """

    voxels: int
    tensor_error: float
    tensor_error_full: float
    fa_mae: float
    md_mae: float
    ad_mae: float
    rd_mae: float
    md_mre: float
    ad_mre: float
    rd_mre: float
    angle_mean: float
    angle_median: float
    angle_voxels: int
    fa_threshold: float

    def as_dict(self) -> dict[str, float | int]:
        """The errors as a plain dict (JSON-ready)."""
        return asdict(self)


def _checked(estimated: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, ...]:
    """Masked (N, 6) float64 tensors of both fields; ConfigError on bad input."""
    estimated, reference, mask = np.asarray(estimated), np.asarray(reference), np.asarray(mask)
    if estimated.ndim != 4 or estimated.shape[-1] != 6:
        raise ConfigError(f"tensor fields must be (X, Y, Z, 6), got estimated {estimated.shape}")
    if reference.shape != estimated.shape:
        raise ConfigError(f"estimated {estimated.shape} and reference {reference.shape} tensor shapes differ")
    if mask.shape != estimated.shape[:3]:
        raise ConfigError(f"mask shape {mask.shape} differs from the tensor grid {estimated.shape[:3]}")
    if mask.dtype != bool:
        raise ConfigError(f"the mask must be a bool array, got {mask.dtype}")
    if not mask.any():
        raise ConfigError("the mask is empty")
    fields = []
    for name, field in (("estimated", estimated), ("reference", reference)):
        values = field[mask].astype(np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            raise ConfigError(f"{name} tensors have {int(bad.sum())} non-finite values in "
                              f"{int(bad.any(axis=1).sum())} of {len(values)} masked voxels")
        fields.append(values)
    return tuple(fields)


def _relative(estimated: np.ndarray, reference: np.ndarray) -> float:
    """Mean |est - ref| / ref over voxels with ref > 0 (NaN if none)."""
    positive = reference > 0
    if not positive.any():
        return float("nan")
    return float(np.mean(np.abs(estimated[positive] - reference[positive]) / reference[positive]))


def tensor_errors(estimated: np.ndarray, reference: np.ndarray, mask: np.ndarray,
                  fa_threshold: float = 0.2) -> TensorErrors:
    """Errors of ``estimated`` against ``reference`` tensors within ``mask``.

    Parameters
    ----------
    estimated, reference : ndarray (X, Y, Z, 6)
        Tensors in DIPY order (Dxx, Dxy, Dyy, Dxz, Dyz, Dzz), mm^2/s.
    mask : bool ndarray (X, Y, Z)
        Voxels to evaluate; must not be empty, and both fields must be finite there.
    fa_threshold : float
        The principal-direction angle only counts voxels with reference FA above this
        (the direction of an isotropic tensor is meaningless).

    Returns
    -------
    TensorErrors
        The tensor error is the mean over voxels of the summed absolute differences of
        the 6 unique elements (``tensor_error_full`` counts off-diagonals twice).
    """
    if not 0 <= fa_threshold < 1:
        raise ConfigError(f"fa_threshold must be in [0, 1), got {fa_threshold}")
    est, ref = _checked(estimated, reference, mask)
    diff = np.abs(est - ref)
    unique = diff.sum(axis=1)
    full = diff[:, _DIAGONAL].sum(axis=1) + 2 * diff[:, _OFF_DIAGONAL].sum(axis=1)

    (evals_e, evecs_e), (evals_r, evecs_r) = decompose(est), decompose(ref)
    maps = {}
    for key, fn in (("fa", fractional_anisotropy), ("md", mean_diffusivity), ("ad", axial_diffusivity),
                    ("rd", radial_diffusivity)):
        maps[key] = fn(evals_e).numpy(), fn(evals_r).numpy()

    # arccos(|v1 . v1'|), computed as atan2(|v1 x v1'|, |v1 . v1'|): the same angle, but
    # accurate near 0 degrees, where arccos loses half the digits.
    anisotropic = maps["fa"][1] > fa_threshold
    v_e, v_r = evecs_e[..., :, 0].numpy()[anisotropic], evecs_r[..., :, 0].numpy()[anisotropic]
    angles = np.degrees(np.arctan2(np.linalg.norm(np.cross(v_e, v_r), axis=-1),
                                   np.abs(np.einsum("vi,vi->v", v_e, v_r))))
    no_angle = len(angles) == 0

    def mae(key: str) -> float:
        return float(np.mean(np.abs(maps[key][0] - maps[key][1])))

    return TensorErrors(
        voxels=len(est), tensor_error=float(unique.mean()), tensor_error_full=float(full.mean()),
        fa_mae=mae("fa"), md_mae=mae("md"), ad_mae=mae("ad"), rd_mae=mae("rd"),
        md_mre=_relative(*maps["md"]), ad_mre=_relative(*maps["ad"]), rd_mre=_relative(*maps["rd"]),
        angle_mean=float("nan") if no_angle else float(angles.mean()),
        angle_median=float("nan") if no_angle else float(np.median(angles)),
        angle_voxels=len(angles), fa_threshold=float(fa_threshold))


FA_BINS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def binned_tensor_errors(estimated: np.ndarray, reference: np.ndarray, mask: np.ndarray,
                         edges: tuple[float, ...] = FA_BINS, fa_threshold: float = 0.2) -> list[dict]:
    """FA, MD and angle errors per bin of the reference FA (stratified: a prior shows as a bias per bin).

    A mean over the whole mask hides a model that pulls every voxel towards the FA it
    was trained on: it is right on average and wrong in every bin. Per bin ``[lo, hi)``
    (the last one closed) of the reference FA:

    - ``voxels``; ``fa_bias`` (mean of estimated - reference FA), ``fa_std`` (its standard
      deviation: the voxel-to-voxel scatter around the bias) and ``fa_mae``;
    - ``md_bias`` and ``md_mae`` (mm^2/s);
    - ``angle_mean`` (degrees, NaN in bins under ``fa_threshold`` and in empty bins) over
      ``angle_voxels``, the bin's voxels with reference FA above ``fa_threshold``.

    Returns a list of dicts, one per bin, with ``lo`` and ``hi``.
    """
    if not 0 <= fa_threshold < 1:
        raise ConfigError(f"fa_threshold must be in [0, 1), got {fa_threshold}")
    edges = tuple(float(e) for e in edges)
    if len(edges) < 2 or any(b <= a for a, b in zip(edges[:-1], edges[1:])):
        raise ConfigError(f"FA bin edges must increase, got {edges}")
    est, ref = _checked(estimated, reference, mask)
    (evals_e, evecs_e), (evals_r, evecs_r) = decompose(est), decompose(ref)
    fa_e, fa_r = fractional_anisotropy(evals_e).numpy(), fractional_anisotropy(evals_r).numpy()
    md_e, md_r = mean_diffusivity(evals_e).numpy(), mean_diffusivity(evals_r).numpy()
    v_e, v_r = evecs_e[..., :, 0].numpy(), evecs_r[..., :, 0].numpy()
    angles = np.degrees(np.arctan2(np.linalg.norm(np.cross(v_e, v_r), axis=-1),
                                   np.abs(np.einsum("vi,vi->v", v_e, v_r))))
    rows = []
    for k, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        last = k == len(edges) - 2
        inside = (fa_r >= lo) & ((fa_r <= hi) if last else (fa_r < hi))
        n = int(inside.sum())
        nan = float("nan")
        with_angle = inside & (fa_r > fa_threshold)
        row = {"lo": lo, "hi": hi, "voxels": n, "angle_voxels": int(with_angle.sum())}
        if n:
            d_fa, d_md = fa_e[inside] - fa_r[inside], md_e[inside] - md_r[inside]
            row.update(fa_bias=float(d_fa.mean()), fa_std=float(d_fa.std()), fa_mae=float(np.abs(d_fa).mean()),
                       md_bias=float(d_md.mean()), md_mae=float(np.abs(d_md).mean()))
            row["angle_mean"] = float(angles[with_angle].mean()) if with_angle.any() else nan
        else:
            row.update(fa_bias=nan, fa_std=nan, fa_mae=nan, md_bias=nan, md_mae=nan, angle_mean=nan)
        rows.append(row)
    return rows
