"""Randomised tissue: compartment parameters drawn per bundle and varied smoothly per voxel.

A learned model trained on one tissue fails on another, so training phantoms draw their
tissue. :class:`TissueSampler` draws, for one subject, from :class:`TissueRanges`:

- per bundle, the fibre population's axial diffusivity ``d_par`` (stick and zeppelin),
  radial diffusivity ``d_perp = perp_ratio * d_par`` (zeppelin; never above ``d_par``),
  intra-axonal fraction ``f_intra`` (the zeppelin has the rest), orientation dispersion
  (a Watson concentration ``kappa``) and free-water fraction ``f_free`` (a b0 signal
  fraction with the CSF's diffusivity, as in free-water DTI);
- per parameter, one smooth field over the grid that moves every bundle's value in
  space (each parameter lives on the logit scale of its range, so the field never
  leaves the range);
- per subject, the grey-matter-like background and CSF diffusivities, the S0s and the
  amplitude of the S0 bias field.

Dispersion perturbs the fibre direction of every sub-voxel sample by a draw from a
Watson distribution around it (:func:`watson_axes`), so a voxel's orientation
distribution is its ``supersample^3`` samples: real tissue's voxel-to-voxel spread
comes with it. The ground-truth peaks stay the undispersed (mean) directions.
:func:`tissue_tensor` gives the eigenvalues of the diffusion tensor that the parameters
imply (the signal's low-b limit, with the Watson distribution's exact second moment),
which is what the ranges are tuned on: single-fibre FA about 0.3-0.95 and MD 0.5-1.3e-3 mm^2/s.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
from scipy.special import dawsn, expit, logit

from ..errors import ConfigError
from .signal import Tissue, bias_field

FIBRE_PARAMETERS = ("d_par", "perp_ratio", "f_intra", "kappa", "f_free")
LOG_SCALE = ("kappa",)  # drawn uniformly in log: dispersion matters in ratios of kappa


@dataclass
class TissueRanges:
    """Bounds (lo, hi) of every drawn tissue parameter; diffusivities in mm^2/s."""

    d_par: tuple[float, float] = (1.2e-3, 2.2e-3)    # axial diffusivity of stick and zeppelin
    perp_ratio: tuple[float, float] = (0.05, 0.6)    # zeppelin radial / axial diffusivity
    f_intra: tuple[float, float] = (0.35, 0.85)      # stick fraction of a population
    kappa: tuple[float, float] = (2.5, 100.0)        # Watson concentration (NODDI's ODI 0.24 to 0.006)
    f_free: tuple[float, float] = (0.0, 0.2)         # free-water fraction, skewed to low values
    spatial_spread: float = 0.75                     # largest amplitude of the fields, logit units
    d_background: tuple[float, float] = (0.65e-3, 1.1e-3)
    d_csf: tuple[float, float] = (2.6e-3, 3.2e-3)    # also the free water's diffusivity
    s0_fibre: tuple[float, float] = (500.0, 2000.0)  # scanner scale; SNR is relative to it
    s0_background_ratio: tuple[float, float] = (1.0, 1.4)  # grey matter / white matter b0
    s0_csf_ratio: tuple[float, float] = (1.4, 3.0)   # CSF / white matter b0 (long T2)
    bias: tuple[float, float] = (0.0, 0.3)           # relative amplitude of the S0 field

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "spatial_spread":
                if not (np.isfinite(value) and value >= 0):
                    raise ConfigError(f"tissue range spatial_spread must be >= 0, got {value}")
                continue
            lo, hi = (float(v) for v in value)
            if not (np.isfinite(lo) and np.isfinite(hi) and 0 <= lo <= hi):
                raise ConfigError(f"tissue range {f.name} must be (lo, hi) with 0 <= lo <= hi, got {value}")
        for name in ("perp_ratio", "f_intra", "f_free", "bias"):
            if getattr(self, name)[1] > 1:
                raise ConfigError(f"tissue range {name} must lie in [0, 1], got {getattr(self, name)}")
        if self.kappa[0] <= 0:
            raise ConfigError(f"tissue range kappa must be positive, got {self.kappa}")


@dataclass
class FibreSamples:
    """Per-sample fibre parameters, the attributes :func:`signal.fibre_signal` reads."""

    d_par: np.ndarray
    d_perp: np.ndarray
    f_intra: np.ndarray
    f_extra: np.ndarray
    f_free: np.ndarray
    kappa: np.ndarray
    d_free: float       # f_intra + f_extra = 1: the only isotropic part is free water


@dataclass
class TissueDraw:
    """One subject's drawn tissue.

    Attributes
    ----------
    tissue : Tissue
        The subject-level values (background, CSF, S0s, bias amplitude).
    logits : dict
        Per fibre parameter, the (B,) bundle values on the logit scale of its range.
    spread : dict
        Per fibre parameter, the amplitude of its spatial field (logit units).
    fields : dict
        Per fibre parameter, the flat (V,) smooth field in [-1, 1].
    ranges : TissueRanges
    """

    tissue: Tissue
    logits: dict[str, np.ndarray]
    spread: dict[str, float]
    fields: dict[str, np.ndarray]
    ranges: TissueRanges

    def value(self, name: str, bundle: int, voxels: np.ndarray | None = None) -> np.ndarray:
        """Parameter ``name`` of ``bundle`` at flat ``voxels`` (at the field's zero when None)."""
        z = self.logits[name][bundle]
        if voxels is not None:
            z = z + self.spread[name] * self.fields[name][voxels]
        lo, hi = getattr(self.ranges, name)
        if name in LOG_SCALE:
            return np.exp(np.log(lo) + (np.log(hi) - np.log(lo)) * expit(z))
        return lo + (hi - lo) * expit(z)

    def fibre(self, bundle: int, voxels: np.ndarray) -> FibreSamples:
        """The fibre parameters of ``bundle`` at flat ``voxels`` (one sample each)."""
        v = {name: np.asarray(self.value(name, bundle, voxels), dtype=np.float64) for name in FIBRE_PARAMETERS}
        return FibreSamples(d_par=v["d_par"], d_perp=v["perp_ratio"] * v["d_par"], f_intra=v["f_intra"],
                            f_extra=1.0 - v["f_intra"], f_free=v["f_free"], kappa=v["kappa"],
                            d_free=self.tissue.d_csf)

    def record(self) -> dict:
        """The drawn values, for the provenance: per bundle at the field's zero, and the spreads."""
        t = self.tissue
        bundles = []
        for k in range(len(self.logits["d_par"])):
            row = {name: float(self.value(name, k)) for name in FIBRE_PARAMETERS}
            row["d_perp"] = row["perp_ratio"] * row["d_par"]
            bundles.append(row)
        return {"d_background": t.d_background, "d_csf": t.d_csf, "s0_fibre": t.s0_fibre,
                "s0_background": t.s0_background, "s0_csf": t.s0_csf, "bias": t.bias,
                "spatial_spread": dict(self.spread), "bundles": bundles}


class TissueSampler:
    """Draws a subject's tissue within ``ranges`` (see the module's docstring)."""

    def __init__(self, ranges: TissueRanges | None = None):
        self.ranges = ranges or TissueRanges()

    def draw(self, rng: np.random.Generator, n_bundles: int, shape: tuple[int, int, int]) -> TissueDraw:
        r = self.ranges

        def uniform(bounds):
            return float(rng.uniform(*bounds))

        s0_fibre = uniform(r.s0_fibre)
        tissue = Tissue(d_background=uniform(r.d_background), d_csf=uniform(r.d_csf), s0_fibre=s0_fibre,
                        s0_background=s0_fibre * uniform(r.s0_background_ratio),
                        s0_csf=s0_fibre * uniform(r.s0_csf_ratio), bias=uniform(r.bias))
        logits, spread, maps = {}, {}, {}
        for name in FIBRE_PARAMETERS:
            u = rng.uniform(size=n_bundles)
            if name == "f_free":
                u = u**2  # most white matter holds little free water; a few bundles much more
            # clip away 0 and 1, where the logit is infinite
            logits[name] = logit(np.clip(u, 1e-6, 1.0 - 1e-6))
            spread[name] = uniform((0.0, r.spatial_spread))
            maps[name] = (bias_field(shape, 1.0, rng) - 1.0).reshape(-1)
        return TissueDraw(tissue, logits, spread, maps, r)


def watson_axes(mean: np.ndarray, kappa: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit axes (P, 3), each drawn from a Watson distribution ``exp(kappa (mean . n)^2)``.

    With ``s = 1 - |cos theta|`` the density of ``s`` on [0, 1] is proportional to
    ``exp(-kappa s (2 - s))``; it is sampled by rejection from the exponential
    ``exp(-kappa s)`` truncated to [0, 1], accepted with probability
    ``exp(-kappa s (1 - s))`` (at least about one half for any kappa).
    """
    mean = np.asarray(mean, dtype=np.float64)
    kappa = np.broadcast_to(np.asarray(kappa, dtype=np.float64), (len(mean),))
    s = np.empty(len(mean))
    todo = np.arange(len(mean))
    while todo.size:
        k = kappa[todo]
        u = rng.uniform(size=todo.size)
        flat = k < 1e-8  # the truncated exponential's limit is uniform
        safe = np.where(flat, 1.0, k)
        proposal = np.where(flat, u, -np.log1p(u * np.expm1(-safe)) / safe)
        accept = rng.uniform(size=todo.size) < np.exp(-k * proposal * (1.0 - proposal))
        s[todo[accept]] = proposal[accept]
        todo = todo[~accept]
    cos = 1.0 - s
    sin = np.sqrt(np.clip(1.0 - cos**2, 0.0, None))
    azimuth = rng.uniform(0.0, 2.0 * np.pi, size=len(mean))
    # a basis perpendicular to each mean, started from the axis least aligned with it
    helper = np.eye(3)[np.argmin(np.abs(mean), axis=1)]
    e1 = np.cross(mean, helper)
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    e2 = np.cross(mean, e1)
    return (cos[:, None] * mean
            + sin[:, None] * (np.cos(azimuth)[:, None] * e1 + np.sin(azimuth)[:, None] * e2))


def watson_mean_cos2(kappa: np.ndarray) -> np.ndarray:
    """``E[(mean . n)^2]`` under a Watson distribution of concentration ``kappa`` (> 0).

    ``1 / (2 sqrt(k) F(sqrt(k))) - 1 / (2 k)`` with Dawson's integral F; below
    ``k = 1e-3`` the series ``1/3 + 4 k / 45``, where the closed form cancels.
    """
    kappa = np.asarray(kappa, dtype=np.float64)
    root = np.sqrt(np.maximum(kappa, 1e-3))
    closed = 1.0 / (2.0 * root * dawsn(root)) - 1.0 / (2.0 * root**2)
    return np.where(kappa < 1e-3, 1.0 / 3.0 + 4.0 * kappa / 45.0, closed)


def tissue_tensor(fibre: FibreSamples) -> np.ndarray:
    """Eigenvalues (P, 3): axial, radial, radial, of the tensor the parameters imply (signal's low-b limit).

    Each compartment's tensor, weighted by its signal fraction, with the fibre axis's
    outer product replaced by its Watson average (``tau`` along the mean direction and
    ``(1 - tau) / 2`` across it); free water adds ``d_free`` isotropically.
    """
    tau = watson_mean_cos2(fibre.kappa)
    extra_gap = fibre.d_par - fibre.d_perp
    axial = fibre.f_intra * fibre.d_par * tau + fibre.f_extra * (fibre.d_perp + extra_gap * tau)
    radial = (fibre.f_intra * fibre.d_par * (1.0 - tau) / 2.0
              + fibre.f_extra * (fibre.d_perp + extra_gap * (1.0 - tau) / 2.0))
    free = fibre.f_free
    axial, radial = (1.0 - free) * axial + free * fibre.d_free, (1.0 - free) * radial + free * fibre.d_free
    return np.stack(np.broadcast_arrays(axial, radial, radial), axis=-1)   # DIPY's evals: FA, MD from dipy.reconst.dti

