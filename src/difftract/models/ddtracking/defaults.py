"""How DDTracking tracks when the user does not say: which shipped model, and its own settings.

Two models ship (``--model``): ``full``, the paper's sizes, and ``fast``, a small network for
CPUs; :data:`DEFAULT_MODEL` is the better trade of speed and accuracy measured by
``benchmarks/bench_ddtracking.py`` (README, "Learned tracking").

A model is trained at one step length (in voxels) and its streamline windows assume it;
its seeding density is part of how it was validated. Both travel in the weights' metadata
(``step_voxels`` is written by ``difftract train ddtracking``; ``seeds_per_voxel`` may be),
so the CLI, :func:`difftract.pipeline.run_subject` and a Python user get the same numbers
without copying them.

The fODF guide's weight (``--fodf-guide``, :mod:`.guide`) is chosen after training, on
validation phantoms no model trained on and no benchmark tests on
(``benchmarks/tune_fodf_guide.py``). :data:`VALIDATED_GUIDES` holds each shipped network's,
by the SHA256 of its weights: a rebuilt network has no validated weight until the script is
run on it again, and tracks unguided until then (a weights file may also carry its own,
``fodf_guide`` in its metadata).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import ConfigError

SHIPPED_MODELS = {"full": "ddtracking", "fast": "ddtracking_fast"}   # --model -> shipped weights name
MATMUL_DTYPES = ("float32", "bfloat16")     # --matmul-dtype: the network's large products (.inference)
DEFAULT_MODEL = "full"
# weights SHA256 -> --fodf-guide: the largest validation F1 with VC within 0.02 of the network alone
VALIDATED_GUIDES = {
    "e9b62639a117e40b7eca9e600c9c264f63c9a0303520883180741e9e4f5aa224": 0.3,    # ddtracking.pt (full)
    "1a81bc3e42abf4703eec11eb4a2a1b085196fde2430317bfbc1e57592b26e63c": 0.7,    # ddtracking_fast.pt (fast)
}


def check_model_choice(weights, model: str | None) -> None:
    """Refuse ``--weights`` together with ``--model``, and an unknown ``--model`` (None: the default)."""
    if weights is not None and model is not None:
        raise ConfigError("--weights replaces the shipped --model: give one of them")
    if model is not None and model not in SHIPPED_MODELS:
        raise ConfigError(f"--model must be one of {', '.join(SHIPPED_MODELS)}, got {model!r}")


def check_matmul_dtype(matmul_dtype: str, ddtracking: bool) -> None:
    """Refuse an unknown ``--matmul-dtype``, and bfloat16 products for a rule without a network."""
    if matmul_dtype not in MATMUL_DTYPES:
        raise ConfigError(f"--matmul-dtype must be one of {', '.join(MATMUL_DTYPES)}, got {matmul_dtype!r}")
    if matmul_dtype != "float32" and not ddtracking:
        raise ConfigError("--matmul-dtype only applies to --method ddtracking")


@dataclass(frozen=True)
class TrackingDefaults:
    """A model's own tracking settings.

    Attributes
    ----------
    step_voxels : float
        The step it was trained with, in voxels of the smallest edge.
    seeds_per_voxel : int
        Random seeds per seed-mask voxel.
    fodf_guide : float
        The fODF guide's weight (0: the network alone).
    """

    step_voxels: float = 1.0
    seeds_per_voxel: int = 1
    fodf_guide: float = 0.0

    def __post_init__(self):
        if (not (np.isfinite(self.step_voxels) and self.step_voxels > 0) or self.seeds_per_voxel < 1
                or not 0.0 <= self.fodf_guide <= 1.0):
            raise ConfigError(f"invalid DDTracking tracking defaults in the weights: {self}")

    @classmethod
    def from_meta(cls, meta: dict) -> TrackingDefaults:
        """The defaults recorded in a weights file's metadata (this class's where absent), and the
        validated guide of a shipped network (:data:`VALIDATED_GUIDES`)."""
        guide = meta.get("fodf_guide", VALIDATED_GUIDES.get(meta.get("sha256"), cls.fodf_guide))
        try:
            return cls(step_voxels=float(meta.get("step_voxels", cls.step_voxels)),
                       seeds_per_voxel=int(meta.get("seeds_per_voxel", cls.seeds_per_voxel)), fodf_guide=float(guide))
        except (TypeError, ValueError):
            raise ConfigError("invalid DDTracking tracking defaults in the weights: step_voxels "
                              f"{meta.get('step_voxels')!r}, seeds_per_voxel {meta.get('seeds_per_voxel')!r}, "
                              f"fodf_guide {meta.get('fodf_guide')!r}") from None

    def step_mm(self, voxel_sizes) -> float:
        """The training step on this grid: voxels of the smallest edge, in mm."""
        return self.step_voxels * float(np.min(voxel_sizes))
