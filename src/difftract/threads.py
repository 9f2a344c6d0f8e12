"""CPU threads that degrade gracefully when other processes share the cores.

Two facts, measured on this project's 2-core machines (``docs/performance.md``):

1. **Spin-waiting.** torch's OpenMP runtime (libgomp) keeps its idle threads spinning
   after each parallel region unless ``OMP_WAIT_POLICY=PASSIVE``. Alone on the machine
   that saves a wake-up; with another busy process on the cores, the spinning threads
   steal the time slices the working thread needs, and every small op waits for a
   descheduled peer: tracking ran 3.5x slower than with passive waits under load.
   libgomp reads the variable once, when torch is first imported, so
   :func:`passive_waits` must run before that (``difftract/__init__`` calls it; a user
   who imports torch first sets the variable in the environment instead).
2. **Barriers per op.** A tracking step is ~100 small ops; with intra-op threads each op
   ends in a barrier, so one descheduled thread stalls all. The tracker therefore runs
   whole chunks of seeds on separate Python threads, each op single-threaded
   (:func:`single_threaded_ops`): a descheduled worker delays only its own chunk, and two
   workers scale like two processes (torch releases the GIL inside its ops).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager


def passive_waits() -> bool:
    """Ask libgomp for passive waits (``OMP_WAIT_POLICY=PASSIVE``) unless the user chose a policy.

    Returns whether the setting can still take effect (torch not imported yet).
    """
    if "torch" in sys.modules:
        return False
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return True


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a Slurm or ``taskset`` allocation)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def worker_threads(requested: int | None = None, device=None) -> int:
    """How many chunk workers to run: one on a GPU (its kernels are the parallelism); on the
    CPU ``requested``, else torch's thread count, at most the usable cores."""
    import torch

    if device is not None and torch.device(device).type != "cpu":
        return 1
    n = torch.get_num_threads() if requested is None else int(requested)
    return max(1, min(n, usable_cores()))


@contextmanager
def single_threaded_ops() -> Iterator[None]:
    """Run torch ops on one intra-op thread inside the block (restored after)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def worker_pool(workers: int, name: str) -> Iterator[ThreadPoolExecutor]:
    """``workers`` threads whose torch ops each run on one intra-op thread.

    OpenMP's thread count is a per-thread setting, so each worker sets its own as it
    starts; the calling thread keeps its own count (its work between chunks, such as
    writing them, is not slowed). torch also takes a worker's setting as the count new
    threads start with, so the caller's count is set again when the pool ends.
    """
    import torch

    before = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix=name, initializer=torch.set_num_threads,
                                initargs=(1,)) as pool:
            yield pool
    finally:
        torch.set_num_threads(before)
