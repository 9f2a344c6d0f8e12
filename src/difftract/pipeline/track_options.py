"""How streamlines grow and are kept: the options every tracking rule shares, and DDTracking's own.

``None`` is a rule's own default, which its source knows (:mod:`.sources`): the tracker's 1 mm
step and :data:`~difftract.tracking.seeding.SEEDS_PER_VOXEL` for the classical rules, and for
DDTracking its training step, seeding and validated fODF guide weight
(:class:`~difftract.models.ddtracking.defaults.TrackingDefaults`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..models.ddtracking.defaults import check_matmul_dtype
from ..models.ddtracking.symmetrise import check_symmetries


@dataclass(frozen=True)
class TrackOptions:
    """How streamlines grow and are kept (``None``: the rule's own default)."""

    method: str = "det"
    step_mm: float | None = None          # 1 mm; DDTracking: its training step
    seeds_per_voxel: int | None = None    # SEEDS_PER_VOXEL; DDTracking: its weights'
    max_angle: float = 45.0
    min_len_mm: float = 20.0
    max_len_mm: float = 250.0
    integrator: str = "euler"
    pmf_threshold: float = 0.1
    valid_only: bool = False
    sampler_steps: int = 1
    stochastic: bool = False
    fodf_guide: float | None = None       # DDTracking: the CSD fODF's weight (models/ddtracking/guide.py); the model's
    matmul_dtype: str = "float32"         # DDTracking: its large products' dtype, float32 or bfloat16 (inference.py)
    symmetries: str = "none"            # DDTracking: the grid symmetries each step is averaged over (symmetrise.py)
    seed: int = 0

    def __post_init__(self):
        if self.seeds_per_voxel is not None and self.seeds_per_voxel < 1:
            raise ConfigError(f"--seeds-per-voxel must be at least 1, got {self.seeds_per_voxel}")
        if self.sampler_steps < 1:
            raise ConfigError(f"--sampler-steps must be at least 1, got {self.sampler_steps}")
        check_matmul_dtype(self.matmul_dtype, self.method == "ddtracking")
        check_symmetries(self.symmetries, self.method == "ddtracking")
        learned_only = [f"--{k}" for k, on in (("stochastic", self.stochastic),
                                               ("sampler-steps", self.sampler_steps != 1),
                                               ("fodf-guide", bool(self.fodf_guide))) if on]
        if learned_only and self.method != "ddtracking":
            raise ConfigError(f"{', '.join(learned_only)} only apply to --method ddtracking")
        self.guide_config()                     # a weight outside [0, 1] is refused before any fit
        if self.method == "ddtracking" and self.integrator != "euler":
            raise ConfigError("DDTracking advances its GRU one point per step: use --integrator euler")

    def guide_config(self, default: float = 0.0):
        """DDTracking's fODF guide (:class:`~difftract.models.ddtracking.guide.GuideConfig`), None without one;
        ``default`` is the weight when ``fodf_guide`` is None (the model's own)."""
        from ..models.ddtracking.guide import GuideConfig

        weight = default if self.fodf_guide is None else self.fodf_guide
        return GuideConfig(weight=weight) if weight else None
