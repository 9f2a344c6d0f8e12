"""Spherical-harmonic (SH) fit of the diffusion signal, batched in torch.

The basis is DIPY's descoteaux07 (real, symmetric: even orders only), built by DIPY so
the coefficients mean exactly what they mean there; ``legacy`` picks DIPY's historical
variant (``|m|`` for negative phase factors, DIPY's and scilpy's default) or the basis as
published (``legacy=False``, the one DIPY recommends). The fit is the Laplace-Beltrami
regularised least squares of :func:`dipy.reconst.shm.sf_to_sh`::

    c = (B^T B + lambda L^2)^-1 B^T s,   L = diag(-l (l + 1))

applied to the b0-normalised signal of one shell (DESIGN: mean b0, DW clipped to <= b0,
divided by b0, zero where b0 is 0). ``lambda`` defaults to 0.006, DIPY's default for its
SH models. lmax 6 gives 28 coefficients.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from dipy.core.gradients import GradientTable
from dipy.core.sphere import Sphere
from dipy.reconst.shm import real_sh_descoteaux, smooth_pinv

from ..device import resolve_device, resolve_dtype
from ..errors import ConfigError
from ..io.gradients import B0_THRESHOLD
from ..memory import chunk_for
from .voxels import MaskedSignal, default_chunk, map_chunks, masked_rows, unmask

log = logging.getLogger("difftract")

DEFAULT_SMOOTH = 0.006  # DIPY's Laplace-Beltrami lambda for its SH models (QballBaseModel)
SHELL_TOLERANCE = 80.0  # b-values linked by gaps <= this form one shell (MRtrix's BValueEpsilon)
SAME_DIRECTION_DEG = 1.0  # directions (up to sign) closer than this count once


def n_coeffs(lmax: int) -> int:
    """Number of coefficients of the symmetric basis up to even order ``lmax``."""
    return (lmax + 1) * (lmax + 2) // 2


def lmax_from_ncoeffs(n: int) -> int:
    """Inverse of :func:`n_coeffs`; raises ValueError for a count that fits no order."""
    lmax = int(round((np.sqrt(8 * n + 1) - 3) / 2))
    if lmax < 0 or lmax % 2 or n_coeffs(lmax) != n:
        raise ValueError(f"{n} is not the coefficient count of a symmetric SH basis (1, 6, 15, 28, 45, ...)")
    return lmax


def check_lmax(lmax: int) -> int:
    """lmax must be an even integer from 0 to 14."""
    if not (isinstance(lmax, (int, np.integer)) and 0 <= lmax <= 14 and lmax % 2 == 0):
        raise ConfigError(f"lmax must be an even integer between 0 and 14, got {lmax!r}")
    return int(lmax)


def sh_basis(directions: np.ndarray, lmax: int, legacy: bool) -> tuple[np.ndarray, np.ndarray]:
    """The descoteaux07 basis sampled at unit ``directions``.

    Returns
    -------
    B : ndarray, (n, n_coeffs(lmax)) float64
        ``B[i, j]`` is harmonic ``j`` at direction ``i``.
    l_values : ndarray of int, (n_coeffs(lmax),)
        The order of each harmonic.
    """
    sphere = Sphere(xyz=np.asarray(directions, dtype=np.float64))
    with warnings.catch_warnings():  # the legacy choice is explicit here, and recorded by callers
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        B, _, l_values = real_sh_descoteaux(check_lmax(lmax), sphere.theta, sphere.phi, legacy=legacy)
    return B, l_values


def sh_fit_matrix(directions: np.ndarray, lmax: int, legacy: bool, smooth: float = DEFAULT_SMOOTH) -> np.ndarray:
    """The ``(n_coeffs, n)`` matrix taking amplitudes at ``directions`` to SH coefficients.

    Identical to the inverse :func:`dipy.reconst.shm.sf_to_sh` applies.
    """
    if not (np.isfinite(smooth) and smooth >= 0):
        raise ConfigError(f"the regularisation lambda (smooth) must be >= 0, got {smooth}")
    B, l_values = sh_basis(directions, lmax, legacy)
    return smooth_pinv(B, np.sqrt(smooth) * (-l_values * (l_values + 1.0)))


def gfa(coeffs: np.ndarray) -> np.ndarray:
    """Generalised FA of SH functions ``(..., n_coeffs)``: sqrt(1 - c0^2 / sum c^2), 0 where all are 0.

    The basis is orthonormal, so this is the normalised standard deviation of the
    function over the sphere (DIPY's GFA from SH coefficients).
    """
    # float64 sums without a squared copy of the coefficients (a whole-brain fODF is 1.3 GB in float64)
    power = np.einsum("...i,...i->...", coeffs, coeffs, dtype=np.float64)
    ratio = np.divide(coeffs[..., 0] ** 2, power, out=np.ones_like(power), where=power > 0)
    return np.sqrt(np.clip(1.0 - ratio, 0.0, 1.0))


@dataclass(frozen=True)
class Shell:
    """The diffusion-weighted volumes of one shell: b-values that scatter around one nominal value."""

    bval: float             # the shell's b-value: the mean of its volumes', rounded
    indices: np.ndarray     # its volumes, ascending
    low: float              # smallest and largest b-value in it
    high: float

    def describe(self) -> str:
        spread = f" ({self.low:.0f}-{self.high:.0f})" if round(self.high) > round(self.low) else ""
        return f"b={self.bval:g}{spread}"


def shell_groups(bvals: np.ndarray, b0_threshold: float = B0_THRESHOLD) -> list[Shell]:
    """The shells of a scheme, ascending: every DW volume belongs to exactly one.

    Sorted b-values are split wherever two neighbours differ by more than
    ``SHELL_TOLERANCE`` (80 s/mm^2, MRtrix's ``BValueEpsilon``), so values that scatter
    around a nominal b (995, 1000, 1005 ... as scanners write them) form one shell however
    many there are. DIPY's ``unique_bvals_tolerance`` (20 s/mm^2, clusters anchored at
    their first value) splits a scatter of +/- 45 into overlapping clusters with volumes
    in two of them or in none, so it is not used here.
    """
    bvals = np.asarray(bvals, dtype=np.float64)
    dw = np.flatnonzero(bvals > b0_threshold)
    if dw.size == 0:
        return []
    order = dw[np.argsort(bvals[dw], kind="stable")]
    cuts = np.flatnonzero(np.diff(bvals[order]) > SHELL_TOLERANCE) + 1
    groups = []
    for part in np.split(order, cuts):
        b = bvals[part]
        groups.append(Shell(float(np.round(b.mean())), np.sort(part), float(b.min()), float(b.max())))
    return groups


def shells(bvals: np.ndarray, b0_threshold: float = B0_THRESHOLD) -> np.ndarray:
    """The b-values of the shells (see :func:`shell_groups`), ascending."""
    return np.array([g.bval for g in shell_groups(bvals, b0_threshold)], dtype=np.float64)


def find_shell(groups: list[Shell], shell: float) -> Shell | None:
    """The shell whose b-value range is nearest ``shell``, within ``SHELL_TOLERANCE``; None if none is."""
    if not groups:
        return None
    gaps = [max(g.low - shell, shell - g.high, 0.0) for g in groups]
    best = int(np.argmin(gaps))
    return groups[best] if gaps[best] <= SHELL_TOLERANCE else None


def distinct_directions(bvecs: np.ndarray, tol_deg: float = SAME_DIRECTION_DEG) -> int:
    """How many directions differ, up to sign, by more than ``tol_deg`` (repeats add no angular information)."""
    v = np.asarray(bvecs, dtype=np.float64)
    norms = np.linalg.norm(v, axis=1)
    v = v[norms > 0] / norms[norms > 0, None]
    kept: list[np.ndarray] = []
    cos = np.cos(np.radians(tol_deg))
    for d in v:
        if not kept or np.max(np.abs(np.asarray(kept) @ d)) < cos:
            kept.append(d)
    return len(kept)


def min_directions(lmax: int) -> int:
    """Distinct directions one shell needs for a constrained or regularised fit up to ``lmax``.

    Up to lmax 4 the fit must be determined: n_coeffs(lmax) (6 for lmax 2, 15 for lmax 4;
    CSD's first, unconstrained estimate is of order 4). Above, the constraint (CSD's
    "super-resolution", Tournier 2007) or the regulariser may fill in at most as many
    coefficients again as there are directions: ceil(n_coeffs / 2), so 15 for lmax 6,
    23 for lmax 8 (a 25- or 32-direction scan runs at lmax 8, as in MRtrix and DIPY),
    33 for lmax 10.
    """
    if lmax <= 4:
        return n_coeffs(lmax)
    return max(n_coeffs(4), -(-n_coeffs(lmax) // 2))


def well_sampled_shell(gtab: GradientTable, min_lmax: int = 6, up_to: int = 8,
                       b0_threshold: float = B0_THRESHOLD) -> tuple[float, int] | None:
    """The highest shell whose directions allow a fit at ``min_lmax`` or more (:func:`min_directions`), and the
    highest order up to ``up_to`` they allow; None when no shell has enough directions.

    What a CSD fit for fODF peaks takes by default: the highest shell, as MRtrix and DIPY do,
    unless it is too sparse (a b = 3000 shell of 12 directions beside b = 1000 with 30).
    """
    bvecs = np.asarray(gtab.bvecs, dtype=np.float64)
    for group in reversed(shell_groups(gtab.bvals, b0_threshold)):
        have = distinct_directions(bvecs[group.indices])
        lmax = next((lmax for lmax in range(up_to, min_lmax - 1, -2) if have >= min_directions(lmax)), None)
        if lmax is not None:
            return float(group.bval), lmax
    return None


def scheme_summary(groups: list[Shell], bvecs: np.ndarray) -> str:
    """``b=317 (310-330): 3 dirs, b=616: 6 dirs, ...`` for messages."""
    return ", ".join(f"{g.describe()}: {distinct_directions(bvecs[g.indices])}" for g in groups)


def check_shell_directions(gtab: GradientTable, picked: Shell, lmax: int, what: str,
                           b0_threshold: float = B0_THRESHOLD, shell_given: bool = False) -> int:
    """Refuse a shell with too few distinct directions for ``what`` at ``lmax``, saying what would work.

    Returns the number of distinct directions of ``picked``.
    """
    bvecs = np.asarray(gtab.bvecs, dtype=np.float64)
    have = distinct_directions(bvecs[picked.indices])
    need = min_directions(lmax)
    if have >= need:
        return have
    groups = shell_groups(gtab.bvals, b0_threshold)
    counts = {g.bval: distinct_directions(bvecs[g.indices]) for g in groups}
    which = "the shell fitted" if shell_given or len(groups) == 1 else "the highest shell (the default)"
    message = (f"{what} at lmax {lmax} needs one shell with at least {need} distinct directions "
               f"({n_coeffs(lmax)} for a fully determined fit); {which}, {picked.describe()}, has {have}. "
               f"Shells (distinct directions): {scheme_summary(groups, bvecs)}")
    usable = [g for g in groups if counts[g.bval] >= need]
    if usable:
        best = max(usable, key=lambda g: (counts[g.bval], g.bval))
        hint = f"the b={best.bval:g} shell ({counts[best.bval]} directions) would do: --shell {best.bval:g}"
    else:
        lower = [(l, g) for g in groups for l in range(lmax - 2, 1, -2) if counts[g.bval] >= min_directions(l)]
        if lower:
            l, g = max(lower, key=lambda lg: (lg[0], counts[lg[1].bval], lg[1].bval))
            on = "" if g.bval == picked.bval else f" --shell {g.bval:g}"
            hint = f"a lower order would do: --lmax {l}{on} ({counts[g.bval]} directions"
            hint += ", too few to resolve crossing fibres)" if l < 4 else ")"
        else:
            hint = (f"no shell has enough directions for any order (lmax 2 needs {min_directions(2)}): {what} needs "
                    "an acquisition with one well-sampled shell")
    if len(groups) > 4 and not usable:
        message += f" ({len(groups)} b-values with few directions each: a q-space (DSI-like) scheme, not shells)"
    raise ConfigError(f"{message}; {hint}")


def select_shell(gtab: GradientTable, shell: float | None = None,
                 b0_threshold: float = B0_THRESHOLD) -> np.ndarray:
    """Indices of the diffusion-weighted volumes of one shell (see :func:`shell_groups`).

    With ``shell=None`` a single-shell scan gives its shell and a multi-shell scan its
    highest shell (as MRtrix's response estimation does), with a note saying so.
    """
    return pick_shell(gtab, shell, b0_threshold).indices


def pick_shell(gtab: GradientTable, shell: float | None = None, b0_threshold: float = B0_THRESHOLD) -> Shell:
    """The :class:`Shell` that :func:`select_shell` takes."""
    groups = shell_groups(gtab.bvals, b0_threshold)
    if not groups:
        raise ConfigError(f"the scan has no diffusion-weighted volume (b > {b0_threshold:g}) to fit")
    if shell is None:
        picked = groups[-1]
        if len(groups) > 1:
            log.info("multi-shell scan (b = %s); fitting the highest shell, %s (choose with --shell)",
                     ", ".join(f"{g.bval:g}" for g in groups), picked.describe())
        return picked
    picked = find_shell(groups, float(shell))
    if picked is None:
        raise ConfigError(f"no volumes with b = {shell:g} (+/- {SHELL_TOLERANCE:g}); the shells are "
                          + ", ".join(g.describe() for g in groups))
    return picked


def normalize_signal(signal: torch.Tensor, b0_index: torch.Tensor, dw_index: torch.Tensor) -> torch.Tensor:
    """b0-normalised DW signal ``(V, n_dw)``: mean b0, DW clipped to <= b0, divided by b0, 0 where b0 <= 0."""
    b0 = signal[:, b0_index].mean(dim=1, keepdim=True)
    dw = torch.minimum(signal[:, dw_index], b0)
    positive = b0 > 0
    return torch.where(positive, dw / torch.where(positive, b0, torch.ones_like(b0)), torch.zeros_like(dw))


@dataclass
class SHFit:
    """SH coefficients on the grid, with what is needed to read them back."""

    coeffs: np.ndarray          # (X, Y, Z, n_coeffs)
    mask: np.ndarray            # (X, Y, Z) bool
    lmax: int
    legacy: bool
    params: dict = field(default_factory=dict)

    def odf(self, directions: np.ndarray) -> np.ndarray:
        """Amplitudes of the fitted function at unit ``directions``, shape ``(X, Y, Z, n)``."""
        B, _ = sh_basis(directions, self.lmax, self.legacy)
        return self.coeffs @ B.T


class SHModel:
    """Regularised SH fit of the b0-normalised signal of one shell (DIPY's model/fit pattern).

    Parameters
    ----------
    gtab : GradientTable
        b-values and unit directions in the data-array frame.
    lmax : int
        Maximal even order (2 to 8 in common use; 6 gives 28 coefficients).
    legacy : bool
        DIPY's legacy descoteaux07 basis (True) or the published one (False).
    smooth : float
        Laplace-Beltrami regularisation lambda (DIPY's default 0.006; 0 for plain LS).
    shell : float or None
        b-value of the shell to fit; None: the only shell, or the highest.
    """

    def __init__(self, gtab: GradientTable, lmax: int = 6, legacy: bool = False, smooth: float = DEFAULT_SMOOTH,
                 shell: float | None = None, b0_threshold: float = B0_THRESHOLD):
        self.gtab, self.lmax, self.legacy, self.smooth = gtab, check_lmax(lmax), bool(legacy), float(smooth)
        if not (np.isfinite(self.smooth) and self.smooth >= 0):
            raise ConfigError(f"the regularisation lambda (smooth) must be >= 0, got {smooth}")
        bvals = np.asarray(gtab.bvals)
        self.b0_index = np.flatnonzero(bvals <= b0_threshold)
        if self.b0_index.size == 0:
            raise ConfigError(f"the scan has no b0 volume (b <= {b0_threshold:g}) to normalise by")
        picked = pick_shell(gtab, shell, b0_threshold)
        self.dw_index = picked.indices
        self.shell = float(np.round(bvals[self.dw_index].mean()))
        n_dw, n_c = len(self.dw_index), n_coeffs(self.lmax)
        if n_dw < n_c and self.smooth == 0:
            raise ConfigError(f"lmax {self.lmax} needs {n_c} directions for an unregularised fit; the b = "
                              f"{self.shell:g} shell has {n_dw} (lower lmax or use smooth > 0)")
        check_shell_directions(gtab, picked, self.lmax, "an SH fit", b0_threshold, shell_given=shell is not None)
        if n_dw < n_c:
            log.info("lmax %d has %d coefficients for %d directions: the fit leans on the regularisation",
                     self.lmax, n_c, n_dw)
        self.directions = np.asarray(gtab.bvecs)[self.dw_index]
        self.fit_matrix = sh_fit_matrix(self.directions, self.lmax, self.legacy, self.smooth)

    @property
    def params(self) -> dict:
        return {"basis": "descoteaux07", "legacy": self.legacy, "lmax": self.lmax, "smooth": self.smooth,
                "shell": self.shell, "n_directions": int(len(self.dw_index)),
                "normalisation": "mean b0; DW clipped to <= b0; divided by b0; 0 where b0 <= 0"}

    def kernel(self, device: torch.device, dtype: torch.dtype):
        """The per-chunk function ``(V, N) signal -> {"coeffs": (V, n_coeffs)}``.

        One product over all ``N`` volumes: the fit matrix gets zero rows for the volumes
        outside the shell (no gathered copy of the DW columns), and the division by b0
        is applied to the coefficients (``(s / b0) F = (s F) / b0``: ``n_coeffs`` divisions
        per voxel instead of one per volume). The same numbers as :func:`normalize_signal`
        followed by the product, up to rounding.
        """
        full = np.zeros((len(self.gtab.bvals), self.fit_matrix.shape[0]))
        full[self.dw_index] = self.fit_matrix.T
        fit_t = torch.as_tensor(full, device=device, dtype=dtype)
        shell_t = torch.as_tensor(self.fit_matrix.T, device=device, dtype=dtype)
        b0_index = torch.as_tensor(self.b0_index, device=device)
        dw_index = torch.as_tensor(self.dw_index, device=device)

        def kernel(signal: torch.Tensor) -> dict[str, torch.Tensor]:
            b0 = signal[:, b0_index].mean(dim=1, keepdim=True)
            coeffs = torch.minimum(signal, b0, out=signal) @ fit_t   # the chunk is map_chunks' own copy
            bad = ~torch.isfinite(coeffs).all(dim=1)
            if bad.any():       # a NaN/Inf in a volume outside the shell: 0 x NaN is NaN, so those rows gather the shell
                rows = bad.nonzero().squeeze(1)
                coeffs[rows] = signal[rows][:, dw_index] @ shell_t
            positive = b0 > 0
            return {"coeffs": coeffs.div_(torch.where(positive, b0, 1.0)).masked_fill_(~positive, 0.0)}

        return kernel

    def fit(self, data: np.ndarray | MaskedSignal, mask: np.ndarray | None = None, *,
            device: str | torch.device = "cpu", dtype: str | torch.dtype = "float64", chunk_size: int | None = None,
            progress: bool | None = None) -> SHFit:
        """Fit every voxel of ``mask`` (all voxels when None); others get zeros.

        ``chunk_size`` None: 4,096 voxels on CPU, 50,000 on CUDA, fewer when free memory is short.
        """
        if data.shape[-1] != len(self.gtab.bvals):
            raise ConfigError(f"data has {data.shape[-1]} volumes but the gradient table {len(self.gtab.bvals)}")
        rows, mask = masked_rows(data, mask)
        device, dtype = resolve_device(device), resolve_dtype(dtype)
        chunk_size = chunk_size or chunk_for(8 * (data.shape[-1] + 3 * len(self.dw_index)) + 1024, device,
                                             default_chunk(device), minimum=256)
        out = map_chunks(self.kernel(device, dtype), rows, device=device, dtype=dtype,
                         chunk_size=chunk_size, progress=progress, desc="SH fit")
        return SHFit(unmask(out["coeffs"], mask), mask, self.lmax, self.legacy, self.params)
