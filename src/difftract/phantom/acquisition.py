"""Randomised acquisition: shells, directions, b0s, SNR, receive coils and voxel size.

:class:`AcquisitionSampler` draws one subject's :class:`Acquisition` from
:class:`AcquisitionRanges`. The defaults span the scans a learned model meets: one to
three shells at b = 700-3000 s/mm^2, 6-150 directions per shell, 1-10 b0s, b0 SNR 8-50,
Rician noise (one coil, or a reconstruction that behaves like one) or non-central chi
noise (the root-sum-of-squares over 2-32 coils), and voxels of 1.25-2.5 mm on presets
whose geometry allows it. The scheme's directions are drawn later, from the scheme
stream (:func:`signal.make_scheme`), and the noise from the noise stream.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import ConfigError


@dataclass
class AcquisitionRanges:
    """Bounds (lo, hi) of every drawn acquisition setting."""

    bvals: tuple[float, float] = (700.0, 3000.0)   # shell b-values, s/mm^2 (rounded to 5)
    shells: tuple[int, int] = (1, 3)               # number of shells, uniform
    ndirs: tuple[int, int] = (6, 150)              # directions per shell, log-uniform
    nb0: tuple[int, int] = (1, 10)                 # b0 volumes, uniform
    snr: tuple[float, float] = (8.0, 50.0)         # b0 SNR in white matter, log-uniform
    coils: tuple[int, int] = (2, 32)               # receive coils of a non-central chi subject, log-uniform
    rician_probability: float = 0.5                # share of subjects with Rician noise (one coil)
    voxel_size: tuple[float, float] = (1.25, 2.5)  # mm, uniform (rounded to 0.05)
    min_shell_gap: float = 300.0                   # s/mm^2 between shells

    def __post_init__(self):
        for name in ("bvals", "shells", "ndirs", "nb0", "snr", "coils", "voxel_size"):
            lo, hi = getattr(self, name)
            if not (np.isfinite(lo) and np.isfinite(hi) and 0 < lo <= hi):
                raise ConfigError(f"acquisition range {name} must be (lo, hi) with 0 < lo <= hi, "
                                  f"got {getattr(self, name)}")
        if self.ndirs[0] < 6:
            raise ConfigError(f"acquisition range ndirs must start at 6 or more (a tensor needs 6), got {self.ndirs}")
        if self.coils[0] < 1 or not 0.0 <= self.rician_probability <= 1.0:
            raise ConfigError(f"acquisition coils must be >= 1 and rician_probability in [0, 1], got "
                              f"{self.coils} and {self.rician_probability}")
        if (self.shells[1] - 1) * self.min_shell_gap > self.bvals[1] - self.bvals[0]:
            raise ConfigError(f"{self.shells[1]} shells {self.min_shell_gap:g} s/mm^2 apart do not fit in "
                              f"b-values {self.bvals}")


@dataclass
class Acquisition:
    """One subject's drawn acquisition (None: not drawn, the configuration's value holds)."""

    bvals: tuple[float, ...] | None
    ndirs: tuple[int, ...] | None
    nb0: int | None
    snr: float | None        # None: noise-free
    coils: int | None        # 1: Rician; more: non-central chi
    voxel_size: float | None

    def record(self) -> dict:
        return {**asdict(self), "noise": None if self.snr is None else
                ("rician" if self.coils == 1 else "noncentral_chi")}


class AcquisitionSampler:
    """Draws acquisitions within ``ranges``."""

    def __init__(self, ranges: AcquisitionRanges | None = None):
        self.ranges = ranges or AcquisitionRanges()

    def draw(self, rng: np.random.Generator) -> Acquisition:
        """Every setting is drawn, always in the same order, so one stream gives one subject."""
        r = self.ranges
        n_shells = int(rng.integers(r.shells[0], r.shells[1] + 1))
        bvals = self._shells(rng, n_shells)
        ndirs = tuple(int(round(v)) for v in _log_uniform(rng, *r.ndirs, size=n_shells))
        nb0 = int(rng.integers(r.nb0[0], r.nb0[1] + 1))
        snr = round(float(_log_uniform(rng, *r.snr)), 2)
        multi = rng.uniform() >= r.rician_probability
        coils = int(round(_log_uniform(rng, *r.coils)))
        voxel_size = round(float(rng.uniform(*r.voxel_size)) / 0.05) * 0.05
        return Acquisition(bvals, ndirs, nb0, snr, coils if multi else 1, round(voxel_size, 2))

    def _shells(self, rng: np.random.Generator, n: int, max_tries: int = 1000) -> tuple[float, ...]:
        r = self.ranges
        for _ in range(max_tries):
            b = np.sort(np.round(rng.uniform(*r.bvals, size=n) / 5.0) * 5.0)
            if n == 1 or np.diff(b).min() >= r.min_shell_gap:
                return tuple(float(v) for v in b)
        raise ConfigError(f"could not draw {n} shells {r.min_shell_gap:g} s/mm^2 apart in {r.bvals} "
                          f"in {max_tries} tries; widen the range or lower min_shell_gap")


def _log_uniform(rng: np.random.Generator, lo: float, hi: float, size=None):
    return np.exp(rng.uniform(np.log(lo), np.log(hi), size=size))
