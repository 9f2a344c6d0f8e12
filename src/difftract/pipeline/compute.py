"""Where and how a stage computes: device, precision, chunk size, and out-of-memory in words."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from ..device import resolve_device
from ..errors import ConfigError
from ..memory import oom_guard


@dataclass(frozen=True)
class Compute:
    """Compute settings shared by the fits and the tracker.

    Attributes
    ----------
    device : str or torch.device
        ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``.
    dtype : str
        ``auto``: the fits in float64 on a CPU (DIPY's numbers to ~1e-12) and float32 on a GPU;
        tracking in float32 (``float64`` reproduces DIPY's streamlines to ~1e-14 mm).
    chunk_size : int or None
        Voxels fitted (or seeds tracked) at once; None is the stage's own default, sized
        from the free memory.
    """

    device: str | torch.device = "auto"
    dtype: str = "auto"
    chunk_size: int | None = None

    def __post_init__(self):
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ConfigError(f"--chunk-size must be at least 1, got {self.chunk_size}")
        if self.dtype not in ("auto", "float32", "float64"):
            raise ConfigError(f"dtype must be auto, float32 or float64, got {self.dtype!r}")

    @property
    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    @property
    def named_device(self) -> str | None:
        """The device as given, None for ``auto`` (what a command line shown for a stage leaves out)."""
        return None if self.device == "auto" else str(self.device)

    def fit_dtype(self, device: torch.device | None = None) -> str:
        """The fits' precision: as given, else float64 on a CPU and float32 on a GPU."""
        if self.dtype != "auto":
            return self.dtype
        return "float64" if (device or self.torch_device).type == "cpu" else "float32"

    def fit_options(self, progress: bool | None) -> dict:
        """Keyword arguments of the models' ``fit``."""
        device = self.torch_device
        return {"device": device, "dtype": self.fit_dtype(device), "chunk_size": self.chunk_size,
                "progress": progress}


def memory_guard(stage: str, device, chunk_size: int | None, unit: str = "voxels") -> AbstractContextManager:
    """Out of memory inside the block becomes one line naming ``stage`` and the chunk size (exit 2 in the CLI)."""
    now = f"it was {chunk_size:,} {unit}" if chunk_size else "the default was used"
    return oom_guard(f"{stage} on {device}", f"lower --chunk-size ({now})")
