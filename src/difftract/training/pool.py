"""A bounded disk pool of simulated training subjects, filled ahead of use by background processes.

:class:`SubjectPool` keeps one ``.npz`` per subject (``s<seed>-<recipe key>.npz``) in a
folder. Background workers simulate the subjects announced with :meth:`SubjectPool.want`,
in order, and write each atomically; :meth:`SubjectPool.get` reads one, asking for it
ahead of the queue and waiting when it is not there yet. Before each write a worker
evicts the least recently used files (reading a file touches it) until the pool holds
fewer than ``max_subjects`` and the new file fits in ``max_bytes``. Several workers share
one queue: a subject is simulated by whichever is free (twice at worst, when one is asked
for urgently while another worker is on it: same seed, same file).

Why a process and not a thread: simulation and the reference fits run for seconds in
numpy, scipy and torch code that often holds the GIL, which would stall the training
step; a separate process runs beside it on its own core. It is started with 'spawn'
(never 'fork'), so it inherits no torch or CUDA state and no DDP sockets from the
trainer; as with any 'spawn' process, a script that uses the pool needs the
``if __name__ == "__main__":`` guard. ``workers=0`` simulates in the calling process
instead (tests, debugging).

Failure is never a hang: a subject that cannot be simulated raises its error in
:meth:`get`; a worker that dies (killed, out of memory) or a subject not ready within
``timeout`` seconds raises :class:`StreamError` naming it.

A GPU trains an epoch faster than one worker simulates its subjects; then more workers
(one per free core) keep it fed.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import re
import signal
import sys
import time
import traceback
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DifftractError
from ..io.atomic import atomic_file, remove_stale
from .recipe import SubjectRecipe

log = logging.getLogger("difftract")
POOL_FILE = re.compile(r"s\d+-[0-9a-f]{12}\.npz")   # SubjectPool.path's names
_POLL = 1.0   # seconds between checks that the worker is alive while waiting


class StreamError(DifftractError, RuntimeError):
    """The subject stream cannot deliver: a subject failed, the worker died, or it timed out."""


class SubjectPool:
    """Simulated subjects on disk, at most ``max_subjects`` files and ``max_bytes`` bytes.

    Parameters
    ----------
    recipe : SubjectRecipe
    folder : path
        The pool folder (created); pools of several recipes or runs may share it.
    max_subjects : int
    max_bytes : int
    workers : int
        Background processes simulating subjects; 0: simulate in the caller when asked.
    timeout : float
        Longest wait, in seconds, for one subject.
    """

    def __init__(self, recipe: SubjectRecipe, folder: str | Path, max_subjects: int = 64,
                 max_bytes: int = 8 * 2**30, workers: int = 1, timeout: float = 3600.0):
        if max_subjects < 1 or max_bytes < 1 or workers < 0 or not timeout > 0:
            raise ConfigError(f"the subject pool needs max_subjects >= 1, max_bytes >= 1, workers >= 0 and a "
                              f"positive timeout, got {max_subjects}, {max_bytes}, {workers}, {timeout}")
        self.recipe, self.folder = recipe, Path(folder)
        self._key = recipe.key   # a hash of the recipe's description: computed once, not per path
        self.max_subjects, self.max_bytes, self.workers, self.timeout = max_subjects, max_bytes, workers, timeout
        self.folder.mkdir(parents=True, exist_ok=True)
        # a worker killed while writing leaves a staging folder that eviction cannot see
        for target in {entry.name[1:].split(".npz.", 1)[0] for entry in self.folder.glob(".s*.npz.*")}:
            remove_stale(self.folder / f"{target}.npz")
        self.seconds: dict[int, float] = {}   # seconds spent simulating each subject made for this pool
        self._made: set[int] = set()          # reported ready by a worker at least once
        self._queued: set[int] = set()        # sent to the workers' queue
        self._failed: dict[int, str] = {}
        self._processes: list = []
        self._queue = self._urgent = self._replies = self._stop = None

    def path(self, seed: int) -> Path:
        return self.folder / f"s{int(seed)}-{self._key}.npz"

    # ------------------------------------------------------------------ the caller's side
    def want(self, seeds: Sequence[int]) -> None:
        """Queue these subjects for the workers, in order (each at most once)."""
        if not self.workers:
            return
        for seed in map(int, seeds):
            if seed not in self._queued and not self.path(seed).is_file():
                self._start().put(seed)
                self._queued.add(seed)

    def get(self, seed: int) -> dict[str, np.ndarray]:
        """Subject ``seed``'s arrays, simulated now or waited for if the pool lacks them."""
        seed = int(seed)
        deadline, asked = time.monotonic() + self.timeout, False
        while True:
            arrays = self._read(seed)
            if arrays is not None:
                self._drain()
                return arrays
            if not self.workers:
                return self._make_here(seed)
            if seed in self._failed:
                raise StreamError(f"subject seed {seed} could not be simulated: {self._failed[seed]}")
            if not asked:
                if seed in self._made:   # ready once, gone now: another writer's eviction
                    log.warning("subject seed %d was evicted from the pool %s before use; simulating it again "
                                "(a larger pool avoids this)", seed, self.folder)
                self._start()
                self._urgent.put(seed)
                asked = True
            left = deadline - time.monotonic()
            if left <= 0:
                raise StreamError(f"subject seed {seed} was not ready after {self.timeout:g} s (raise the "
                                  f"stream timeout, or use a smaller phantom)")
            if self._receive(min(left, _POLL), seed):
                asked = False   # ready: read it next; should it be gone already, ask again

    def close(self) -> None:
        """Stop the workers (the pool's files stay for later runs)."""
        if not self._processes:
            return
        self._stop.set()
        deadline = time.monotonic() + 10   # a worker finishes the subject it is on, if it is quick
        for process in self._processes:
            process.join(max(deadline - time.monotonic(), 0.1))
            if process.is_alive():
                process.terminate()
                process.join(5)
        self._processes = []
        self._drain()
        for q in (self._queue, self._urgent, self._replies):   # frees their semaphores now, not at exit
            q.close()
            q.join_thread()
        self._queue = self._urgent = self._replies = self._stop = None

    def __enter__(self) -> SubjectPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self):
        """Start the workers on first use; the normal queue."""
        if not self._processes:
            ctx = mp.get_context("spawn")
            self._queue, self._urgent, self._replies, self._stop = ctx.Queue(), ctx.Queue(), ctx.Queue(), ctx.Event()
            self._queued.clear()
            args = (self.recipe, str(self.folder), self.max_subjects, self.max_bytes,
                    self._queue, self._urgent, self._stop, self._replies)
            with _single_threaded_children():
                for k in range(self.workers):
                    process = ctx.Process(target=_work, name=f"difftract-subjects-{k}", args=args, daemon=True)
                    process.start()
                    self._processes.append(process)
        return self._queue

    def _receive(self, wait: float, seed: int) -> bool:
        """Take the workers' reports for up to ``wait`` s; True when ``seed`` was reported ready."""
        try:
            reply = self._replies.get(timeout=wait)
        except queue.Empty:
            dead = [p for p in self._processes if not p.is_alive()]
            if dead:
                code = dead[0].exitcode
                self.close()
                why = ", killed: out of memory?" if code in (-9, 137) else ""
                raise StreamError(f"a subject worker died (exit code {code}{why}) while subject seed {seed} was "
                                  f"awaited; the pool {self.folder} keeps the finished subjects, so --resume "
                                  "continues from the last checkpoint") from None
            return False
        self._note(reply)
        return reply[0] == "ready" and reply[1] == seed

    def _note(self, reply: tuple) -> None:
        kind, seed, detail = reply
        if kind == "failed":
            self._failed[seed] = detail
        else:
            self._made.add(seed)
            if detail is not None:
                self.seconds[seed] = detail

    def _drain(self) -> None:
        """Take the reports already sent (timings of subjects read before their report arrived)."""
        while self._replies is not None:
            try:
                self._note(self._replies.get_nowait())
            except (queue.Empty, OSError, ValueError):
                return

    def _read(self, seed: int) -> dict[str, np.ndarray] | None:
        path = self.path(seed)
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            os.utime(path)   # most recently used
            return arrays
        except FileNotFoundError:
            return None
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            log.warning("unreadable pool file %s (%s): simulating the subject again", path, e)
            path.unlink(missing_ok=True)
            return None

    def _make_here(self, seed: int) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        try:
            arrays = self.recipe.make(seed)
        except DifftractError as e:
            raise StreamError(f"subject seed {seed} could not be simulated: {e}") from None
        self.seconds[seed] = time.perf_counter() - t0
        store(self.path(seed), arrays, self.max_subjects, self.max_bytes)
        return arrays


def store(path: Path, arrays: dict[str, np.ndarray], max_subjects: int, max_bytes: int) -> None:
    """Write ``arrays`` to ``path`` atomically, evicting least recently used pool files first."""
    size = sum(a.nbytes for a in arrays.values()) + 4096 * (len(arrays) + 1)   # + zip headers, roughly
    if size > max_bytes:
        raise StreamError(f"one subject takes {size / 2**20:.0f} MiB, more than the pool's limit of "
                          f"{max_bytes / 2**20:.0f} MiB; raise it")
    evict(path.parent, max_subjects - 1, max_bytes - size)
    with atomic_file(path, force=True) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def evict(folder: Path, keep: int, keep_bytes: int) -> list[Path]:
    """Remove the least recently used ``*.npz`` of ``folder`` until at most ``keep`` files and ``keep_bytes`` remain."""
    files = []
    for p in folder.glob("*.npz"):
        if POOL_FILE.fullmatch(p.name) is None:   # never another tool's files sharing the folder
            continue
        try:
            st = p.stat()
        except FileNotFoundError:   # another rank's worker evicted it meanwhile
            continue
        files.append((st.st_mtime_ns, st.st_size, p))
    files.sort()
    total, removed = sum(f[1] for f in files), []
    for _, size, p in files:
        if len(files) - len(removed) <= max(keep, 0) and total <= keep_bytes:
            break
        p.unlink(missing_ok=True)
        total -= size
        removed.append(p)
    return removed


class _single_threaded_children:
    """Spawned workers start with one BLAS/OpenMP thread each (the variables are read at import).

    Simulation is numpy/scipy; left at the default, every worker's BLAS would take every core
    from the training step it is meant to run beside.
    """

    NAMES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

    def __enter__(self):
        self.saved = {k: os.environ.get(k) for k in self.NAMES}
        os.environ.update({k: "1" for k in self.NAMES})

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _work(recipe: SubjectRecipe, folder: str, max_subjects: int, max_bytes: int, jobs, urgent, stop,
          replies) -> None:
    """A worker process: simulate queued subjects (urgent ones first) until stopped or orphaned."""
    # close() terminates a worker that is slow to stop: exit through the atomic writers' cleanup
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    pool = SubjectPool(recipe, folder, max_subjects, max_bytes, workers=0)
    parent = mp.parent_process()
    while not stop.is_set():
        if parent is not None and not parent.is_alive():   # the trainer was killed: do not linger
            return
        try:
            seed = urgent.get_nowait()
        except queue.Empty:
            try:
                seed = jobs.get(timeout=_POLL)
            except queue.Empty:
                continue
        if pool.path(seed).is_file():
            replies.put(("ready", seed, None))
            continue
        t0 = time.perf_counter()
        try:
            store(pool.path(seed), recipe.make(seed), max_subjects, max_bytes)
        except Exception as e:   # reported to the caller, who raises it where the subject is needed
            detail = str(e) if isinstance(e, DifftractError) else "".join(traceback.format_exception(e))
            replies.put(("failed", seed, detail))
            continue
        replies.put(("ready", seed, time.perf_counter() - t0))
