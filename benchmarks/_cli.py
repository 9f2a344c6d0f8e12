"""Run the ``difftract`` CLI from a benchmark and measure its wall time and peak memory.

The peak is the child's own high-water mark (``VmHWM`` in ``/proc/self/status``), printed
by a small wrapper as it exits. The rusage of a child (``RUSAGE_CHILDREN``) would also
count the size of the benchmark process at fork time, and the largest child so far.
"""

from __future__ import annotations

import subprocess
import sys
import time

# Runs the CLI and prints its peak RSS (kB) last on stderr.
PEAK_WRAPPER = """import runpy, sys
try:
    runpy.run_module("difftract", run_name="__main__", alter_sys=True)
finally:
    peak = [line for line in open("/proc/self/status") if line.startswith("VmHWM")][0]
    print(peak.split()[1], file=sys.stderr)
"""


def run_cli(*argv: str) -> tuple[float, float]:
    """``difftract -q ARGV``: wall time (s) and peak RSS (GB); raises when it fails."""
    cmd = [sys.executable, "-c", PEAK_WRAPPER, "-q", *map(str, argv)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"difftract {' '.join(map(str, argv[:2]))} exited with status {proc.returncode}: "
                           f"{proc.stderr[-500:]}")
    return seconds, int(proc.stderr.split()[-1]) / 1024**2
