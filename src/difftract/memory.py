"""Memory: how much a stage may use, and a clear error when it runs out.

Chunk sizes (voxels fitted at once, seeds tracked at once) bound a stage's working memory.
:func:`available_bytes` reads what the device can give now (a container's cgroup limit
included, which ``/proc/meminfo`` ignores), :func:`chunk_for` turns a per-item cost into a
chunk size, and :func:`oom_guard` turns the many ways torch and numpy report exhaustion
into one :class:`~difftract.errors.ResourceError` that names the stage and what to lower.
The Linux OOM killer sends SIGKILL, which no program can catch: what such a run leaves
behind is removed by the next one (:mod:`difftract.io.atomic`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from .errors import ResourceError

log = logging.getLogger("difftract")

# Fraction of the free memory one stage's chunk may take: the rest is for the scan, the
# outputs being built, the allocator's slack and whatever else runs on the machine.
BUDGET_FRACTION = 0.25
_OOM_TEXT = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory")


def _cgroup_free() -> int | None:
    """Bytes left under this process's cgroup (v2 or v1) memory limit, if one is set."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:     # "max" or a huge number: no limit
            return max(int(limit) - usage, 0)
    return None


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def available_bytes(device: torch.device | str = "cpu") -> int | None:
    """Memory the device can give now, in bytes (None when it cannot be told)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    found = [v for v in (_meminfo_available(), _cgroup_free()) if v is not None]
    return min(found) if found else None


def chunk_for(bytes_per_item: float, device: torch.device | str, default: int, minimum: int = 1) -> int:
    """Items per chunk: ``default``, or fewer when ``BUDGET_FRACTION`` of the free memory holds fewer.

    The default is kept whenever memory allows, so that results which depend on the chunk
    size (random draws are made per chunk) do not change with the machine's load.
    """
    free = available_bytes(device)
    if free is None or bytes_per_item <= 0:
        return default
    fits = int(BUDGET_FRACTION * free / bytes_per_item)
    return max(minimum, min(default, fits))


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure (numpy, torch CPU or CUDA)."""
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(t in str(exc).lower() for t in _OOM_TEXT)


@contextmanager
def oom_guard(stage: str, advice: str) -> Iterator[None]:
    """Turn running out of memory inside the block into a :class:`ResourceError`.

    ``stage`` says what was running (``"CSD fit on cpu"``), ``advice`` what to lower
    (``"lower --chunk-size (it was 2000)"``).
    """
    try:
        yield
    except ResourceError:
        raise
    except BaseException as exc:
        if not is_out_of_memory(exc):
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise ResourceError(f"out of memory during {stage}: {advice}") from None
