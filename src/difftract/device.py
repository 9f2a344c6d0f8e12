"""Choosing the torch device and dtype for the hot paths."""

from __future__ import annotations

import torch

from .errors import ConfigError

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; ``cuda`` without a GPU is an error."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for but no CUDA GPU is available (use --device cpu or auto)")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; expected auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {name!r}; expected auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    """``float32`` or ``float64`` (names or torch dtypes)."""
    if isinstance(name, torch.dtype):
        if name not in DTYPES.values():
            raise ConfigError(f"dtype must be float32 or float64, got {name}")
        return name
    if name not in DTYPES:
        raise ConfigError(f"dtype must be float32 or float64, got {name!r}")
    return DTYPES[name]


def cpu_has_bfloat16() -> bool:
    """Whether this CPU has bfloat16 units (AVX512-BF16 or AMX; True where torch cannot say). oneDNN's own
    ``_is_mkldnn_bf16_supported`` asks only for AVX512 and is True where it emulates them."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return True
