"""How DDTracking tracks when the user does not say: which shipped model, and its own settings.

Two models ship (``--model``): ``full``, the paper's sizes, and ``fast``, a small network for
CPUs; :data:`DEFAULT_MODEL` is the better trade of speed and accuracy measured by
``benchmarks/bench_ddtracking.py`` (README, "Learned tracking").

A model is trained at one step length (in voxels) and its streamline windows assume it;
its seeding density is part of how it was validated. Both travel in the weights' metadata
(``step_voxels`` is written by ``difftract train ddtracking``; ``seeds_per_voxel`` may be),
so the CLI, :func:`difftract.pipeline.run_subject` and a Python user get the same numbers
without copying them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import ConfigError

SHIPPED_MODELS = {"full": "ddtracking", "fast": "ddtracking_fast"}   # --model -> shipped weights name
DEFAULT_MODEL = "full"


def check_model_choice(weights, model: str | None) -> None:
    """Refuse ``--weights`` together with ``--model``, and an unknown ``--model`` (None: the default)."""
    if weights is not None and model is not None:
        raise ConfigError("--weights replaces the shipped --model: give one of them")
    if model is not None and model not in SHIPPED_MODELS:
        raise ConfigError(f"--model must be one of {', '.join(SHIPPED_MODELS)}, got {model!r}")


@dataclass(frozen=True)
class TrackingDefaults:
    """A model's own tracking settings.

    Attributes
    ----------
    step_voxels : float
        The step it was trained with, in voxels of the smallest edge.
    seeds_per_voxel : int
        Random seeds per seed-mask voxel.
    """

    step_voxels: float = 1.0
    seeds_per_voxel: int = 1

    def __post_init__(self):
        if not (np.isfinite(self.step_voxels) and self.step_voxels > 0) or self.seeds_per_voxel < 1:
            raise ConfigError(f"invalid DDTracking tracking defaults in the weights: {self}")

    @classmethod
    def from_meta(cls, meta: dict) -> TrackingDefaults:
        """The defaults recorded in a weights file's metadata (this class's where absent)."""
        return cls(step_voxels=float(meta.get("step_voxels", cls.step_voxels)),
                   seeds_per_voxel=int(meta.get("seeds_per_voxel", cls.seeds_per_voxel)))

    def step_mm(self, voxel_sizes) -> float:
        """The training step on this grid: voxels of the smallest edge, in mm."""
        return self.step_voxels * float(np.min(voxel_sizes))
