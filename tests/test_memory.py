"""Memory: chunk sizes from free memory and per-item cost; out of memory as one line with exit 2."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from difftract import memory
from difftract.cli import main
from difftract.errors import ResourceError


def test_chunk_keeps_the_default_when_memory_allows(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 16 << 30)
    assert memory.chunk_for(10_000, "cpu", default=20_000) == 20_000
    assert memory.chunk_for(1 << 20, "cpu", default=20_000) == 4096         # 16 GiB / 4 / 1 MiB
    monkeypatch.setattr(memory, "available_bytes", lambda device: 1000)
    assert memory.chunk_for(1 << 20, "cpu", default=20_000, minimum=64) == 64
    monkeypatch.setattr(memory, "available_bytes", lambda device: None)
    assert memory.chunk_for(1 << 20, "cpu", default=20_000) == 20_000


def test_available_memory_is_a_positive_number():
    free = memory.available_bytes("cpu")
    assert free is None or free > 0


@pytest.mark.parametrize("exc,oom", [
    (MemoryError(), True),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried "
                  "to allocate 999 bytes"), True),
    (RuntimeError("shape mismatch"), False),
    (ValueError("out of memory"), False),
])
def test_out_of_memory_is_recognised(exc, oom):
    assert memory.is_out_of_memory(exc) is oom


def test_guard_names_the_stage_and_what_to_lower():
    with pytest.raises(ResourceError, match=r"out of memory during CSD fit on cpu: lower --chunk-size \(it was 2000\)"):
        with memory.oom_guard("CSD fit on cpu", "lower --chunk-size (it was 2000)"):
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory")
    with pytest.raises(RuntimeError, match="shape"):      # other errors pass through
        with memory.oom_guard("CSD fit on cpu", "x"):
            raise RuntimeError("shape mismatch")


def _allocation_fails(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


def _scan_args(scan) -> list[str]:
    s = scan(n_dw=30, shape=(6, 6, 6))
    return [str(s["dwi"]), str(s["bval"]), str(s["bvec"]), "--mask", str(s["mask"])]


def test_fit_out_of_memory_is_one_line_and_exit_2(monkeypatch, capsys, scan, tmp_path_factory):
    from difftract.reconst.csd import CsdModel

    monkeypatch.setattr(CsdModel, "fit", _allocation_fails)
    out = tmp_path_factory.mktemp("out")
    code = main(["-q", "fit", "csd", *_scan_args(scan), "--lmax", "4", "--out", str(out / "fod.nii.gz"),
                 "--chunk-size", "500"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "out of memory during the CSD fit" in err[0] and "--chunk-size (it was 500 voxels)" in err[0]
    assert list(out.iterdir()) == []


def test_tracking_out_of_memory_is_one_line_and_exit_2(monkeypatch, capsys, scan, tmp_path_factory):
    from difftract.tracking.tracker import Tracker

    monkeypatch.setattr(Tracker, "_track_chunk", _allocation_fails)
    out = tmp_path_factory.mktemp("out")
    code = main(["-q", "track", *_scan_args(scan), "--lmax", "4", "--out", str(out / "t.trx")])
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "error" in line or "Traceback" in line]
    assert code == 2 and len(err) == 1, err
    assert "out of memory during det tracking" in err[0] and "lower --chunk-size (it was" in err[0]
    assert list(out.iterdir()) == []


def test_ddtracking_chunks_are_smaller_than_a_peak_lookups(monkeypatch):
    """With 2 GiB free, a DDTracking seed costs far more than a det or peak one."""
    from difftract.models.ddtracking.getter import DDTrackingGetter
    from difftract.models.ddtracking.model import DDTracking, DDTrackingConfig
    from difftract.tracking.getters import make_getter
    from difftract.tracking.sh_field import SHField
    from difftract.tracking.tracker import CHUNK_CPU, TrackingParams, default_chunk_size

    monkeypatch.setattr(memory, "available_bytes", lambda device: 2 << 30)
    params = TrackingParams()
    coeffs = np.zeros((4, 4, 4, 45), np.float32)
    coeffs[..., 0] = 1
    det = make_getter("det", sh=SHField(coeffs, legacy=False))
    peak = make_getter("peak", peaks=torch.zeros(4, 4, 4, 3, 3))
    dd = DDTrackingGetter(DDTracking(DDTrackingConfig()), np.zeros((4, 4, 4, 28), np.float32))
    sizes = {name: default_chunk_size(g, params, "cpu") for name, g in (("det", det), ("peak", peak), ("dd", dd))}
    assert sizes["dd"] < sizes["det"] / 2 and sizes["det"] <= sizes["peak"]
    monkeypatch.setattr(memory, "available_bytes", lambda device: 64 << 30)
    assert default_chunk_size(dd, params, "cpu") == CHUNK_CPU    # plenty of memory: the default
