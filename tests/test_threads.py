"""The CPU thread policy (``difftract.threads``): passive OpenMP waits unless the user chose,
worker counts bounded by the usable cores, chunk sizes that do not depend on the machine."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from difftract.threads import single_threaded_ops, usable_cores, worker_threads
from difftract.tracking.tracker import CHUNK_CPU, CHUNK_CUDA, MIN_CHUNK_CPU, preferred_chunk_size


def _policy_after_import(env_policy: str | None, first: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if env_policy is not None:
        env["OMP_WAIT_POLICY"] = env_policy
    code = f"import {first}; import difftract, os; print(os.environ.get('OMP_WAIT_POLICY'))"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.parametrize("env_policy,first,expected", [
    (None, "json", "PASSIVE"),          # difftract before torch: passive waits
    ("ACTIVE", "json", "ACTIVE"),       # the user's choice stands
    (None, "torch", "None"),            # torch already loaded libgomp: nothing to set
])
def test_importing_difftract_asks_for_passive_openmp_waits(env_policy, first, expected):
    assert _policy_after_import(env_policy, first) == expected


def test_worker_threads_never_exceed_the_usable_cores():
    cores = usable_cores()
    assert 1 <= cores <= (os.cpu_count() or 1)
    assert worker_threads(cores + 5) == cores
    assert worker_threads(1) == 1
    assert worker_threads(cores + 5, device="cuda") == 1      # a GPU's parallelism is its kernels
    with single_threaded_ops():                  # the default follows torch's thread count
        assert worker_threads() == 1


def test_single_threaded_ops_restore_the_thread_count():
    before = torch.get_num_threads()
    with single_threaded_ops():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_chunk_sizes_depend_on_the_seed_count_and_device_only():
    assert preferred_chunk_size(100, "cpu") == MIN_CHUNK_CPU
    assert preferred_chunk_size(6_348, "cpu") == 3_174          # two even chunks for two workers
    assert preferred_chunk_size(27_202, "cpu") == 13_601
    assert preferred_chunk_size(50_784, "cpu") == 12_696        # four
    size = preferred_chunk_size(10**6, "cpu")
    assert size <= CHUNK_CPU and (-(-10**6 // size)) % 2 == 0
    assert preferred_chunk_size(None, "cpu") == CHUNK_CPU
    assert preferred_chunk_size(27_202, "cuda") == CHUNK_CUDA
