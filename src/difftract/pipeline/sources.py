"""What a tracker reads: a classical rule's fODF (:class:`FodSource`) or the DDTracking network
with the SH its weights read (:class:`LearnedSource`), each with the defaults that belong to it.

:func:`~.track.track` takes either. A network is guided by the CSD fODF by default, at the
weight validated for it (:class:`~difftract.models.ddtracking.defaults.TrackingDefaults`):
its fODF is given (``fod``) or fitted from the scan when first needed, on the highest shell
with the directions for lmax 6 or more (:func:`~difftract.reconst.sh.well_sampled_shell`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..console import Console
from ..device import cpu_has_bfloat16
from ..errors import ConfigError
from ..tracking.seeding import SEEDS_PER_VOXEL
from .compute import Compute, memory_guard
from .track_options import TrackOptions

log = logging.getLogger("difftract")
SH_BASES = ("descoteaux07", "descoteaux07_legacy")


@dataclass
class FodSource:
    """A classical rule's field: fODF SH coefficients ``(X, Y, Z, m)`` and their basis."""

    coeffs: np.ndarray
    legacy: bool = False
    description: str = "CSD"
    mask: np.ndarray | None = None     # where ``peak`` looks for peaks (default: everywhere)

    @classmethod
    def fitted(cls, dwi, lmax: int = 8, compute: Compute = Compute(), console: Console = Console(),
               shell: float | None = None) -> FodSource:
        """The CSD fODF of ``dwi`` (auto response; ``shell`` None: the highest), as ``track`` fits it without
        ``--sh``."""
        from ..reconst.csd import CsdModel

        on = "" if shell is None else f", b={shell:g}"
        log.info("no --sh: fitting CSD (lmax %d%s, auto response)", lmax, on)
        with memory_guard(f"the CSD fit (lmax {lmax})", compute.torch_device, None):
            fit = CsdModel(dwi.gtab, lmax=lmax, legacy=False, shell=shell).fit(dwi.signal, dwi.mask,
                                                                               **compute.fit_options(console.bars))
        return cls(fit.coeffs.astype(np.float32), description=f"CSD lmax {lmax}{on}", mask=dwi.mask)

    @classmethod
    def for_guide(cls, dwi, compute: Compute = Compute(), console: Console = Console(), lmax: int | None = None
                  ) -> FodSource | None:
        """The CSD fODF that guides DDTracking when none is given: on the highest shell with the directions for
        lmax 6 or more, at the highest order up to 8 they allow (the highest shell alone leaves no shell out);
        None when no shell has them (DDTracking's own lmax 6 input cannot be fitted either). With ``lmax``, on
        the highest shell with the directions for it (or the highest shell, whose fit then says why not)."""
        from ..reconst.sh import well_sampled_shell

        plan = well_sampled_shell(dwi.gtab, 6, 8) if lmax is None else well_sampled_shell(dwi.gtab, lmax, lmax)
        if plan is None:
            return None if lmax is None else cls.fitted(dwi, lmax, compute, console)
        shell, lmax = plan
        return cls.fitted(dwi, lmax, compute, console, shell=shell)

    def defaults(self, voxel_sizes) -> tuple[float, int]:
        return 1.0, SEEDS_PER_VOXEL

    def getter(self, options: TrackOptions, voxel_sizes, compute: Compute, console: Console):
        from ..reconst.peaks import peaks_from_sh
        from ..tracking.getters import make_getter
        from ..tracking.sh_field import SHField

        sh_field = SHField(self.coeffs, legacy=self.legacy, pmf_threshold=options.pmf_threshold)
        peaks = None
        if options.method == "peak":
            found = peaks_from_sh(self.coeffs, self.mask, legacy=self.legacy, **compute.fit_options(console.bars))
            peaks = torch.as_tensor(found.dirs)
        return make_getter(options.method, sh=sh_field, peaks=peaks, max_angle=options.max_angle)

    @property
    def sh_basis(self) -> str:
        return SH_BASES[int(self.legacy)]

    def record(self) -> dict:
        return {"fod": self.description}


def guide_config_of(meta: dict, options: TrackOptions):
    """``options.guide_config`` with the validated weight of the network of weights metadata ``meta`` where
    ``fodf_guide`` is None (:class:`~difftract.models.ddtracking.defaults.TrackingDefaults`: 0.3 for
    ``full``, 0.7 for ``fast``), known before the network's input is fitted."""
    from ..models.ddtracking.defaults import TrackingDefaults

    return options.guide_config(TrackingDefaults.from_meta(meta).fodf_guide)


def load_network(weights, model: str | None, options: TrackOptions) -> tuple[tuple, bool]:
    """DDTracking's network and weights metadata (:func:`~difftract.models.ddtracking.getter.load_ddtracking`;
    read before the scan, so that bad weights are refused first) and whether its fODF guide is on."""
    from ..models.ddtracking.getter import load_ddtracking

    network = load_ddtracking(weights, model)
    return network, guide_config_of(network[1], options) is not None


@dataclass
class LearnedSource:
    """The DDTracking network, its weights' metadata, and the SH it reads (the scan's signal SH, or its
    CSD fODF SH for a network trained on those: :func:`~difftract.models.ddtracking.data.input_sh`).

    ``fod`` is the CSD fODF (a :class:`FodSource`) that guides its steps under
    ``TrackOptions.fodf_guide`` (:mod:`~difftract.models.ddtracking.guide`), by default the
    weight validated for the network (:meth:`guide_config`). Without one, it is fitted from
    ``scan`` (the scan the input was fitted from, :meth:`fitted`) when a guide first needs it
    (:meth:`FodSource.for_guide`).

    ``domain`` compares the scan with what the network was trained on
    (:func:`~difftract.models.ddtracking.domain.scan_domain`): :func:`track` warns in one
    line when the scan lies outside, and the sidecar records it.
    """

    model: torch.nn.Module
    meta: dict
    sh: np.ndarray
    domain: dict = field(default_factory=dict)
    fod: FodSource | None = None
    scan: object | None = field(default=None, repr=False)

    @classmethod
    def for_scan(cls, model: torch.nn.Module, meta: dict, sh: np.ndarray, dwi, fod: FodSource | None = None
                 ) -> LearnedSource:
        """The network, the SH it reads, and how ``dwi`` compares with its training domain (``dwi`` also gives
        the guide's fODF where ``fod`` is None)."""
        from ..models.ddtracking.domain import scan_domain

        return cls(model, meta, sh, scan_domain(meta, dwi), fod, dwi)

    @classmethod
    def fitted(cls, model: torch.nn.Module, meta: dict, dwi, device="cpu", fod: FodSource | None = None
               ) -> LearnedSource:
        """:meth:`for_scan` with the input fitted from ``dwi`` at the network's lmax: the signal SH of the
        shell nearest b=1000, or the CSD fODF SH for a network of ``input`` fodf
        (:func:`~difftract.models.ddtracking.data.input_sh`)."""
        from ..models.ddtracking.data import input_sh
        from ..reconst.sh import lmax_from_ncoeffs

        lmax = lmax_from_ncoeffs(model.config.n_coeffs)
        return cls.for_scan(model, meta, input_sh(dwi, model.config.input, lmax, device=device), dwi, fod)

    def warn_domain(self, scan) -> None:
        """One line when the scan lies outside the network's training data."""
        if self.domain.get("domain_warnings"):
            log.warning("DDTracking: %s is outside the network's training data (%s); its streamlines may be "
                        "unreliable, compare with --method det", scan, "; ".join(self.domain["domain_warnings"]))

    def defaults(self, voxel_sizes) -> tuple[float, int]:
        from ..models.ddtracking.defaults import TrackingDefaults

        own = TrackingDefaults.from_meta(self.meta)
        return own.step_mm(voxel_sizes), own.seeds_per_voxel

    def getter(self, options: TrackOptions, voxel_sizes, compute: Compute, console: Console):
        from ..models.ddtracking.getter import DDTrackingGetter

        trained = self.defaults(voxel_sizes)[0]
        if options.step_mm is not None and abs(options.step_mm - trained) > 1e-6 * trained:
            log.warning("--step-mm %g differs from the step DDTracking was trained with (%g mm here)",
                        options.step_mm, trained)
        if not np.allclose(voxel_sizes, min(voxel_sizes), rtol=1e-3):
            log.warning("anisotropic voxels %s: DDTracking was trained in voxel units, so its steps and directions "
                        "are converted, but resampling to isotropic voxels matches training better",
                        tuple(round(float(v), 3) for v in voxel_sizes))
        if options.matmul_dtype == "bfloat16" and compute.torch_device.type == "cpu" and not cpu_has_bfloat16():
            log.warning("--matmul-dtype bfloat16: this CPU has no bfloat16 units (AMX, AVX512-BF16), so its bfloat16 "
                        "products are emulated and may be slower than float32's")
        return DDTrackingGetter(self.model, self.sh, options.max_angle, options.sampler_steps, options.stochastic,
                                voxel_sizes=voxel_sizes, guide=self.guide(options, compute, console),
                                matmul_dtype=getattr(torch, options.matmul_dtype), symmetries=options.symmetries)

    def guide_config(self, options: TrackOptions):
        """:func:`guide_config_of` this network."""
        return guide_config_of(self.meta, options)

    def guide(self, options: TrackOptions, compute: Compute = Compute(), console: Console = Console()):
        """The fODF guide of :meth:`guide_config` on :attr:`fod`, fitted from :attr:`scan` if need be (None at 0)."""
        from ..models.ddtracking.guide import FodfGuide
        from ..tracking.sh_field import SHField

        config = self.guide_config(options)
        if config is None:
            return None
        if self.fod is None and self.scan is None:
            raise ConfigError(f"--fodf-guide {config.weight:g} needs the CSD fODF: give LearnedSource a fod, or "
                              "make it with LearnedSource.fitted or for_scan (which fit one from the scan)")
        if self.fod is None:
            self.fod = FodSource.for_guide(self.scan, replace(compute, dtype="auto"), console)
            if self.fod is None:
                raise ConfigError(f"--fodf-guide {config.weight:g} needs the CSD fODF, and the scan has no shell "
                                  "with the 15 directions CSD needs at lmax 6: give one (--sh), or --fodf-guide 0 "
                                  "for the network alone")
            self.scan = None          # fitted: the source need not keep the scan alive
        return FodfGuide(SHField(self.fod.coeffs, legacy=self.fod.legacy, pmf_threshold=options.pmf_threshold),
                         config)

    def guide_record(self, options: TrackOptions) -> dict:
        """What the sidecar says of the guide: its settings and the fODF it read, or ``fodf_guide`` 0."""
        config = self.guide_config(options)
        if config is None:
            return {"fodf_guide": 0.0}
        return {**config.record(), "fodf_guide_fod": self.fod.description, "fodf_guide_sh_basis": self.fod.sh_basis}

    sh_basis = "descoteaux07"     # input_sh fits the published basis, signal or fODF

    def record(self) -> dict:
        meta = self.meta
        return {"model": "ddtracking", "variant": meta["config"]["variant"], "weights": meta["path"],
                "weights_sha256": meta["sha256"], "input": meta.get("input"), **self.domain}
