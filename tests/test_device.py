"""Device and dtype choices."""

from __future__ import annotations

import pytest
import torch

from difftract.device import resolve_device, resolve_dtype
from difftract.errors import ConfigError


def test_auto_and_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("name", ["gpu", "mps", "cuda:99"])
def test_bad_devices_refused(name):
    with pytest.raises(ConfigError, match="device"):
        resolve_device(name)


def test_dtypes():
    assert resolve_dtype("float32") is torch.float32 and resolve_dtype(torch.float64) is torch.float64
    with pytest.raises(ConfigError, match="float32 or float64"):
        resolve_dtype("float16")
    with pytest.raises(ConfigError):
        resolve_dtype(torch.int32)
