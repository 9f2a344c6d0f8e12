"""Diffusion signal of the phantom: acquisition schemes, tissue model, magnitude noise.

Each fibre population is an intra-axonal stick plus an extra-axonal zeppelin and a
small isotropic part, optionally mixed with free water; voxels (sub-sampled on a
regular grid) mix fibre populations with isotropic background tissue by volume. S0
differs between fibre and background tissue and varies smoothly in space (a
receive-bias-like field). Noise is Rician (one coil) or non-central chi (the
root-sum-of-squares magnitude over several coils).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from dipy.core.sphere import HemiSphere, disperse_charges

from ..errors import ConfigError
from ..io.gradients import B0_THRESHOLD


@dataclass
class Tissue:
    """Compartment parameters (diffusivities in mm^2/s).

    The defaults give, at b = 1000, single-fibre FA ~0.76 and MD ~0.78e-3,
    values typical of adult white matter.
    """

    d_par: float = 1.7e-3          # stick and zeppelin parallel diffusivity
    d_perp: float = 0.7e-3         # zeppelin perpendicular diffusivity
    f_intra: float = 0.45          # stick fraction of a fibre population
    f_extra: float = 0.45          # zeppelin fraction; the rest is isotropic
    d_iso: float = 1.0e-3          # isotropic part inside bundles
    d_background: float = 0.8e-3   # background tissue (grey-matter-like)
    d_csf: float = 3.0e-3          # free water at body temperature
    s0_fibre: float = 1000.0       # b0 signal of fibre tissue (sets the SNR reference)
    s0_background: float = 1150.0  # b0 signal of background tissue
    s0_csf: float = 2000.0         # CSF's long T2 makes it bright on b0 images
    bias: float = 0.1              # relative amplitude of the smooth S0 field

    def __post_init__(self):
        if not 0 <= self.f_intra + self.f_extra <= 1:
            raise ConfigError("tissue fractions f_intra + f_extra must lie in [0, 1]")
        if min(self.d_par, self.d_perp, self.d_iso, self.d_background, self.d_csf) < 0:
            raise ConfigError("diffusivities must be non-negative")


def make_scheme(bvals: tuple[float, ...] = (1000.0,), ndirs: int | tuple[int, ...] = 32, nb0: int = 2,
                rng: np.random.Generator | None = None, start: str = "random") -> tuple[np.ndarray, np.ndarray]:
    """A single- or multi-shell scheme with near-uniform directions per shell.

    Directions come from electrostatic repulsion on the half sphere (DIPY's
    ``disperse_charges``), so each shell has its own set, started from random points
    (``start="random"``, 1000 steps) or from a randomly rotated lattice
    (``start="lattice"``, 50 steps: 150 directions in 0.2 s instead of 2 s, and more even,
    closest pair 11 degrees apart instead of 7).
    The b0 volumes come first.

    Returns
    -------
    bvals : (N,) array
    bvecs : (N, 3) array, unit vectors (zero for b0s), in the data-array frame.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    shells = tuple(float(b) for b in np.atleast_1d(bvals))
    counts = tuple(int(n) for n in np.broadcast_to(np.atleast_1d(ndirs), (len(shells),)))
    if nb0 < 1:
        raise ConfigError(f"a scheme needs at least one b0 volume, got nb0={nb0}")
    if not shells:
        raise ConfigError("a scheme needs at least one shell b-value")
    if any(not (np.isfinite(b) and B0_THRESHOLD < b <= 20000) for b in shells):
        raise ConfigError(f"shell b-values must lie in ({B0_THRESHOLD:g}, 20000] s/mm^2, got {shells}")
    if any(not 6 <= n <= 1000 for n in counts):
        raise ConfigError(f"each shell needs 6 to 1000 directions, got {counts}")
    if start not in ("random", "lattice"):
        raise ConfigError(f"scheme start must be 'random' or 'lattice', got {start!r}")
    all_b, all_v = [np.zeros(nb0)], [np.zeros((nb0, 3))]
    for b, n in zip(shells, counts):
        all_b.append(np.full(n, b))
        all_v.append(uniform_directions(n, rng) if start == "random" else lattice_directions(n, rng))
    return np.concatenate(all_b), np.concatenate(all_v)


def uniform_directions(n: int, rng: np.random.Generator, iters: int = 1000) -> np.ndarray:
    """``n`` unit vectors spread evenly over the half sphere."""
    start = rng.normal(size=(n, 3))
    start /= np.linalg.norm(start, axis=1, keepdims=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hemi, _ = disperse_charges(HemiSphere(xyz=start), iters)
    return np.asarray(hemi.vertices, dtype=np.float64)


def lattice_directions(n: int, rng: np.random.Generator, iters: int = 50) -> np.ndarray:
    """``n`` unit vectors spread evenly over the half sphere, from a rotated lattice.

    A Fibonacci lattice on the upper half sphere (equal-area rings: z uniform in (0, 1),
    golden-angle azimuths) is already nearly even, so a few repulsion steps finish it;
    the random rotation makes every set different.
    """
    k = np.arange(n)
    z = (k + 0.5) / n
    azimuth = k * np.pi * (3.0 - np.sqrt(5.0))
    r = np.sqrt(1.0 - z**2)
    q, upper = np.linalg.qr(rng.normal(size=(3, 3)))
    rotation = q * np.sign(np.diag(upper))  # Haar-distributed orthogonal matrix
    start = np.column_stack([r * np.cos(azimuth), r * np.sin(azimuth), z]) @ rotation.T
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hemi, _ = disperse_charges(HemiSphere(xyz=start), iters)
    return np.asarray(hemi.vertices, dtype=np.float64)


def fibre_signal(directions: np.ndarray, bvals: np.ndarray, bvecs: np.ndarray, tissue) -> np.ndarray:
    """Normalised signal (P, N) of fibre populations with unit ``directions`` (P, 3).

    ``tissue`` holds the compartment parameters: scalars ``d_par``, ``d_perp``,
    ``f_intra``, ``f_extra`` and ``d_iso`` shared by all populations (a :class:`Tissue`),
    or (P,) arrays ``d_par``, ``d_perp``, ``f_intra``, ``f_extra = 1 - f_intra``, one value
    per population, with free water ``f_free``/``d_free`` as the only isotropic part (a b0
    signal fraction, as in free-water DTI; a ``randomize.FibreSamples``).
    """
    if isinstance(tissue.d_par, np.ndarray):
        return _per_sample_signal(directions, bvals, bvecs, tissue)
    cos2 = (directions @ bvecs.T) ** 2
    b = bvals[None, :]
    f_iso = 1.0 - tissue.f_intra - tissue.f_extra
    return (tissue.f_intra * np.exp(-b * tissue.d_par * cos2)
            + tissue.f_extra * np.exp(-b * (tissue.d_perp + (tissue.d_par - tissue.d_perp) * cos2))
            + f_iso * np.exp(-b * tissue.d_iso))


def _per_sample_signal(directions: np.ndarray, bvals: np.ndarray, bvecs: np.ndarray, t) -> np.ndarray:
    """:func:`fibre_signal` with one parameter set per population, computed in place.

    The same equations as the shared-tissue case, plus free water; the (P, N) work arrays
    are reused, since for millions of samples the passes over memory are the cost.
    """
    def col(name):
        return np.asarray(getattr(t, name), dtype=np.float64).reshape(-1, 1)

    d_par, d_perp, f_intra, f_extra = col("d_par"), col("d_perp"), col("f_intra"), col("f_extra")
    f_free = col("f_free")
    bcos2 = directions @ bvecs.T
    np.square(bcos2, out=bcos2)
    bcos2 *= bvals                                  # b (g . n)^2
    signal = bcos2 * -d_par                         # stick: exp(-b d_par (g . n)^2)
    np.exp(signal, out=signal)
    signal *= f_intra
    extra = bcos2                                   # zeppelin: exp(-b d_perp - b (d_par - d_perp) (g . n)^2)
    extra *= d_perp - d_par
    extra -= d_perp * bvals
    np.exp(extra, out=extra)
    extra *= f_extra
    signal += extra
    signal *= 1.0 - f_free
    signal += f_free * np.exp(-bvals * np.asarray(t.d_free, dtype=np.float64))
    return signal


def isotropic_signal(bvals: np.ndarray, diffusivity: float) -> np.ndarray:
    """Normalised signal (N,) of free isotropic diffusion."""
    return np.exp(-bvals * diffusivity)


def bias_field(shape: tuple[int, int, int], amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth multiplicative field around 1 (a few random low-frequency cosines)."""
    grids = np.meshgrid(*[np.linspace(0.0, 1.0, n) for n in shape], indexing="ij")
    field = np.zeros(shape)
    for _ in range(4):
        k = rng.uniform(0.3, 1.5, size=3) * np.pi
        field += np.cos(sum(ki * g for ki, g in zip(k, grids)) + rng.uniform(0, 2 * np.pi))
    field /= max(np.abs(field).max(), 1e-12)
    return 1.0 + amplitude * field


def add_rician_noise(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Rician noise: the magnitude of the signal plus complex Gaussian noise of std ``sigma``."""
    if sigma <= 0:
        return signal
    real = signal + rng.normal(scale=sigma, size=signal.shape)
    imag = rng.normal(scale=sigma, size=signal.shape)
    return np.sqrt(real**2 + imag**2)


def add_coil_noise(signal: np.ndarray, sigma: float, coils: int, rng: np.random.Generator,
                   chunk: int = 4_000_000, dtype=np.float64) -> np.ndarray:
    """Non-central chi noise: the root-sum-of-squares magnitude over ``coils`` receive coils.

    Each coil adds complex Gaussian noise of std ``sigma`` per channel. Only the coils'
    summed signal power matters, so the image is ``sqrt((S + sigma z)^2 + sigma^2 X)``
    with ``z`` standard normal and ``X`` chi-square with ``2 coils - 1`` degrees of freedom
    (the noise orthogonal to the signal). At high SNR the magnitude's std is ``sigma``, so
    ``S0 / sigma`` is the stated SNR for any coil count; the noise floor, ``E[M^2] = S^2 +
    2 coils sigma^2``, grows with the coils. One coil is Rician. Drawn ``chunk`` values
    at a time (a brain-size DWI would otherwise need several copies of itself), into an
    array of ``dtype``.
    """
    if coils < 1:
        raise ConfigError(f"coil count must be at least 1, got {coils}")
    flat = np.asarray(signal, dtype=np.float64).reshape(-1)
    out = np.empty(flat.shape, dtype=dtype)
    if sigma <= 0:
        out[:] = flat
        return out.reshape(np.shape(signal))
    for start in range(0, flat.size, chunk):
        s = flat[start:start + chunk]
        real = s + rng.normal(scale=sigma, size=s.size)
        orthogonal = rng.chisquare(2 * coils - 1, size=s.size) * sigma**2
        out[start:start + chunk] = np.sqrt(real**2 + orthogonal)
    return out.reshape(np.shape(signal))
