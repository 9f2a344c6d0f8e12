"""A cohort: :func:`.run.run_subject` on every subject of a folder or a list, as Dask tasks.

Each subject is one task, run on a Dask distributed worker: a ``LocalCluster`` of worker
*processes* by default (one subject at a time each, ``torch`` limited to its share of the
cores), or any running scheduler (a SLURM cluster through dask-jobqueue, see
``docs/cohorts.md``). The outputs are ``OUT/NAME`` per subject (what ``difftract run``
writes), ``OUT/logs/NAME.log`` (its stage lines and notes), and the cohort's tables
``OUT/cohort.csv``, ``OUT/cohort.json`` and page ``OUT/cohort.html``, rewritten as each
subject finishes, so a killed cohort leaves a table of what it finished.

A subject's folder appears only complete (``run_subject`` stages it and renames it at the
end), so a rerun skips every subject whose ``OUT/NAME`` holds its report and tractograms
and recomputes nothing for it; ``force`` reruns them all. A subject that fails (bad input,
any exception, a worker that died) is recorded with a one-line error and the others go on.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from collections import Counter
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, InputError
from ..io.atomic import remove_stale
from .cohort_report import counts, finished_row, read_json, row_figures, write_tables
from ..console import Console
from .run import RunOptions, run_subject

log = logging.getLogger("difftract")

STATUSES = ("done", "skipped", "failed", "pending")


@dataclass
class CohortResult:
    """One row per subject (:data:`.cohort_report.COLUMNS`; status done, skipped or failed) and the tables' paths."""

    out: Path
    rows: list[dict]
    seconds: float = 0.0
    workers: int | None = None
    torch_threads: int | None = None
    tables: dict[str, Path] = field(default_factory=dict)

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.rows if r["status"] == "failed"]

    def counts(self) -> dict[str, int]:
        return counts(self.rows)

    def write(self, options: RunOptions, seconds: float) -> dict[str, Path]:
        """The cohort's tables and page, as they stand (:func:`.cohort_report.write_tables`)."""
        return write_tables(self.out, self.rows, options, seconds=round(seconds, 1), workers=self.workers,
                            torch_threads=self.torch_threads)


# ---------------------------------------------------------------------- the subjects
def find_subjects(subjects: str | Path, out: str | Path | None = None) -> list[tuple[str, Path]]:
    """``(name, folder)`` of each subject: the sub-folders of a folder, or the lines of a text file.

    A list file holds one subject folder per line (blank lines and ``#`` comments skipped;
    relative paths are taken from the list file's folder). Hidden sub-folders, and ``out``
    when it lies inside the folder, are not subjects. A subject's name is its folder's name,
    or, when two share one (HCP's ``ID/T1w/Diffusion``), its path below their common folder
    joined with ``_``.
    """
    from ..io.dwi import SUBJECT_LAYOUTS

    subjects = Path(subjects)
    if subjects.is_dir():
        if any((subjects / n).exists() for names, *_ in SUBJECT_LAYOUTS for n in names):
            raise ConfigError(f"{subjects}: this is one subject's folder; give the folder that holds the subjects' "
                              "folders (or a list file), or use `difftract run` for one subject")
        skip = Path(os.path.abspath(out)) if out is not None else None
        folders = sorted(p for p in subjects.iterdir()
                         if p.is_dir() and not p.name.startswith(".") and Path(os.path.abspath(p)) != skip)
    elif subjects.is_file():
        lines = [line.strip() for line in subjects.read_text().splitlines()]
        folders = [Path(line) if Path(line).is_absolute() else subjects.parent / line
                   for line in lines if line and not line.startswith("#")]
    else:
        raise InputError(subjects, "not found: give a folder of subject folders or a text file listing them")
    if not folders:
        raise InputError(subjects, "no subject folder in it")
    names = [p.name for p in folders]
    if len(set(names)) < len(names):
        common = Path(os.path.commonpath([os.path.abspath(p) for p in folders]))
        names = ["_".join(Path(os.path.abspath(p)).relative_to(common).parts) for p in folders]
    repeated = sorted(n for n, k in Counter(names).items() if k > 1)
    if repeated:
        raise InputError(subjects, f"subject {repeated[0]} is listed more than once")
    return list(zip(names, folders))


def is_complete(out: Path, options: RunOptions) -> bool:
    """Whether ``out`` holds a finished run of ``options``: its report, every tractogram, and these options.

    A folder finished with other options (another method, seed, weights...) raises a
    :class:`~difftract.errors.ConfigError`: skipping it would report its results as this run's.
    """
    if not ((out / "report.html").is_file() and all((out / options.tracks_name(m)).is_file() for m in options.methods)):
        return False
    params = (read_json(out / "run.json") or {}).get("params")
    # an option the finished run predates (absent from its run.json) had its default then
    done = {**RunOptions().record(), **params} if params else {}
    wanted = options.record()
    differ = sorted(k for k in wanted if k != "device" and done.get(k) != wanted[k])
    if differ:
        # DDTracking runs made before the guide became the default were unguided
        keep = "; --fodf-guide 0 takes runs made without the guide" if differ == ["fodf_guide"] else ""
        raise ConfigError(f"{out} was finished with other options ({', '.join(f'{k} {done.get(k)!r}' for k in differ)}, "
                          f"now {', '.join(repr(wanted[k]) for k in differ)}); rerun with --force or give another "
                          f"--out{keep}")
    return True


# ---------------------------------------------------------------------- the task (runs on a worker)
class _LogConsole(Console):
    """Stage lines into the subject's log, never a progress bar (a worker has no terminal)."""

    def progress(self, total: int, desc: str, unit: str = "it"):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, disable=True)

    @property
    def bars(self) -> bool | None:
        return False


class _ThreadHandler(logging.Handler):
    """The ``difftract`` logger's notes and warnings from one thread (a worker may run several tasks)."""

    def __init__(self, stream):
        super().__init__(logging.INFO)
        self.thread, self.stream = threading.get_ident(), stream

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.stream.write(f"difftract: {'warning' if record.levelno >= logging.WARNING else 'note'}: "
                              f"{record.getMessage()}\n")


def run_task(name: str, directory: Path, out: Path, options: RunOptions, torch_threads: int | dict[str, int],
             force: bool) -> dict:
    """Run one subject in this worker; its row. Every exception becomes a failed row (type and first line).

    ``torch_threads`` is the number of torch threads, or, per worker host, how many tasks it
    runs at once (:func:`_slots`), among which this host's cores are shared.
    """
    import torch
    from distributed import get_worker
    from distributed.comm import get_address_host

    from ..io.atomic import atomic_file

    if isinstance(torch_threads, int):
        threads = torch_threads
    else:
        worker = get_worker()
        threads = max(1, _cores() // (torch_threads.get(get_address_host(worker.address)) or worker.state.nthreads))
    torch.set_num_threads(threads)
    buffer = io.StringIO()
    handler = _ThreadHandler(buffer)
    log.addHandler(handler)
    previous = log.level, log.propagate
    # notes into the log, and not to the worker's stderr through the root logger (which some library may have set up)
    log.setLevel(min(log.getEffectiveLevel(), logging.INFO))
    log.propagate = False
    gpu = torch.cuda.is_available() and options.compute.device != "cpu"
    _reset_peak(gpu)
    start = time.perf_counter()
    row = {"name": name, "subject": str(directory), "out": str(out)}
    try:
        if not force and is_complete(out, options):    # a rerun of a task whose worker was lost after it finished
            return finished_row(name, directory, out, options, None)
        summary = run_subject(directory, out, options, console=_LogConsole(stream=buffer), force=force)
        row.update(status="done", error="", **row_figures(summary.streamlines, summary.mean_length_mm, summary.scores,
                                                       options.methods))
    except Exception as exc:                # noqa: BLE001 - any failure is this subject's row, not the cohort's end
        row.update(status="failed", error=_one_line(exc))
        buffer.write(f"difftract: error: {row['error']}\n")
    finally:
        log.removeHandler(handler)
        log.setLevel(previous[0])
        log.propagate = previous[1]
    row.update(seconds=round(time.perf_counter() - start, 2), torch_threads=threads, **_peaks(gpu))
    (out.parent / "logs").mkdir(parents=True, exist_ok=True)
    with atomic_file(out.parent / "logs" / f"{name}.log", force=True) as tmp:
        tmp.write_text(buffer.getvalue())
    return row


def _reset_peak(gpu: bool) -> None:
    """Restart the process's peak RSS at its current size (Linux ``clear_refs`` 5), so the peak is this task's."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass                                 # not Linux, or not allowed: the peak is the process's so far
    if gpu:
        import torch

        torch.cuda.reset_peak_memory_stats()


def _peaks(gpu: bool) -> dict:
    """Peak resident memory of this worker process since :func:`_reset_peak` (``VmHWM``), and of the GPU, in GB."""
    try:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM"))
        rss = int(line.split()[1]) / 1024**2
    except (OSError, StopIteration, ValueError):
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2   # kB on Linux; the process's peak
    out = {"peak_rss_gb": round(rss, 3), "peak_gpu_gb": ""}
    if gpu:
        import torch

        out["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 1024**3, 3)
    return out


# ---------------------------------------------------------------------- the cohort (runs on the client)
def run_cohort(subjects: str | Path, out: str | Path, options: RunOptions = RunOptions(), *,
               workers: int | None = None, scheduler: str | None = None, client=None,
               threads_per_worker: int | None = None, memory_per_worker: str | int | None = "auto",
               force: bool = False, console: Console = Console()) -> CohortResult:
    """Run every subject of ``subjects`` into ``out/NAME`` on Dask (see the module docstring).

    Parameters
    ----------
    subjects : path
        A folder of subject folders, or a text file listing them (:func:`find_subjects`).
    out : path
        The cohort's folder: ``OUT/NAME`` per subject, the logs and the cohort tables.
    options : RunOptions
        What each subject's run does (as ``difftract run``).
    workers : int, optional
        Worker processes of the local cluster (default: one per core, at most one per subject).
    scheduler : str, optional
        A running Dask scheduler instead of a local cluster: its address (``tcp://HOST:8786``) or
        the JSON file ``dask scheduler --scheduler-file`` wrote.
    client : distributed.Client, optional
        A client to use as it is (e.g. of a ``SLURMCluster``); neither ``workers`` nor ``scheduler`` then.
    threads_per_worker : int, optional
        Torch threads of each task (default: a host's cores divided among the tasks it runs at once).
        Each local worker runs one subject at a time.
    memory_per_worker : str or int
        The local workers' memory limit (``"4GB"``; ``"auto"`` shares the machine's; 0 or None: no limit).
        A worker over it is restarted and its subject reported as failed.
    force : bool
        Rerun finished subjects too (their folders are replaced).
    console : Console
        Where the cohort's lines and progress bar go (each subject's own lines go to its log).

    Returns
    -------
    CohortResult
    """
    start = time.perf_counter()
    if sum(x is not None for x in (workers, scheduler, client)) > 1:
        raise ConfigError("give at most one of --workers (a local cluster), --scheduler and a client")
    for label, value in (("--workers", workers), ("--threads-per-worker", threads_per_worker)):
        if value is not None and value < 1:
            raise ConfigError(f"{label} must be at least 1, got {value}")
    memory = _memory_limit(memory_per_worker)
    options = options.resolved()    # DDTracking's guide weight made explicit: what run.json records
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(out, "the cohort's output must be a folder; this is a file")
    listed = find_subjects(subjects, out)
    if "logs" in dict(listed):
        raise ConfigError(f"{subjects}: a subject named logs would share OUT/logs with the subjects' logs; rename it")
    out.mkdir(parents=True, exist_ok=True)
    previous = {r.get("name"): r for r in (read_json(out / "cohort.json") or {}).get("subjects", [])}
    rows: dict[str, dict] = {}
    todo = []
    for name, directory in listed:
        try:
            finished = not force and is_complete(out / name, options)
        except ConfigError as exc:      # finished with other options: reported, not silently reused
            rows[name] = {"name": name, "status": "failed", "error": _one_line(exc), "subject": str(directory),
                          "out": str(out / name)}
            continue
        if finished:
            rows[name] = finished_row(name, directory, out / name, options, previous.get(name))
        else:
            rows[name] = {"name": name, "status": "pending", "error": "", "subject": str(directory),
                          "out": str(out / name)}
            todo.append((name, directory))
    console.say(f"cohort: {len(listed)} subjects, {len(listed) - len(todo)} finished already (skipped), "
                f"{len(todo)} to run -> {out}")
    result = CohortResult(out, list(rows.values()))
    if todo:
        try:
            with _connect(client, scheduler, workers, threads_per_worker, memory, len(todo)) as (dask, threads, n):
                result.workers = n
                result.torch_threads = threads if isinstance(threads, int) else None
                console.say(f"cohort: {n} workers" + (f", {threads} torch thread{'s' * (threads > 1)} each"
                                                      if isinstance(threads, int) else "")
                            + (f", at {dask.scheduler.address}" if client is not None or scheduler else ""))
                result.write(options, time.perf_counter() - start)
                _run_all(dask, todo, rows, result, out, options, threads, force, console, start)
        finally:   # interrupted: the staging folders of the subjects that were running, once their workers are gone
            for name, _ in todo:
                remove_stale(out / name)
    result.rows, result.seconds = list(rows.values()), time.perf_counter() - start
    result.tables = result.write(options, result.seconds)
    tally = result.counts()
    console.say(f"cohort: {', '.join(f'{tally[s]} {s}' for s in STATUSES if tally.get(s))} in "
                f"{result.seconds:.0f} s -> {result.tables['html']}")
    return result


def _run_all(client, todo, rows, result, out, options, threads, force, console, start) -> None:
    """Submit one task per subject and take their rows as they complete, rewriting the tables each time."""
    from distributed import as_completed

    futures = {client.submit(run_task, name, directory, out / name, options, threads, force, pure=False,
                             key=f"difftract-run-{name}-{os.urandom(4).hex()}"): name for name, directory in todo}
    bar = console.progress(len(futures), "cohort", "subject")
    try:
        for future in as_completed(futures):
            name = futures[future]
            try:
                row = future.result()
            except Exception as exc:        # noqa: BLE001 - the task's worker died, or could not run it at all
                row = {**rows[name], "status": "failed", "error": _lost_task(exc)}
            rows[name] = row
            bar.update(1)
            console.say(f"{name}: failed: {row['error']}" if row["status"] == "failed" else
                        f"{name}: {row['status']}, {row.get('streamlines', '')} streamlines, {row.get('seconds')} s")
            result.rows = list(rows.values())
            result.write(options, time.perf_counter() - start)
    finally:
        bar.close()
        for future in futures:
            future.cancel()


def _lost_task(exc: Exception) -> str:
    from distributed import KilledWorker

    if isinstance(exc, KilledWorker):
        return ("KilledWorker: the worker running it died (out of memory? give more --memory-per-worker, "
                "or fewer --workers)")
    return _one_line(exc)


def _one_line(exc: BaseException) -> str:
    """``Type: the message's first line`` (a DifftractError's names the file and the problem)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _memory_limit(value: str | int | None):
    if value in (None, 0, "0", "auto"):
        return "auto" if value == "auto" else 0
    from dask.utils import parse_bytes

    try:
        return parse_bytes(value)
    except (ValueError, TypeError):
        raise ConfigError(f"--memory-per-worker: expected a size such as 4GB or 512MiB, or auto, got {value!r}") \
            from None


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextmanager
def _connect(client, scheduler, workers: int | None, threads: int | None, memory, tasks: int):
    """``(client, torch threads or tasks at once per host, workers)``: given, a scheduler's, or a local cluster's."""
    import dask
    from distributed import Client, LocalCluster

    with ExitStack() as stack:
        if client is None and scheduler is not None:   # an address, or the file `dask scheduler --scheduler-file` wrote
            client = stack.enter_context(Client(scheduler_file=scheduler) if str(scheduler).endswith(".json")
                                         else Client(scheduler))
        if client is not None:
            info = client.scheduler_info(n_workers=-1)["workers"].values()
            if not info:
                raise ConfigError(f"the Dask scheduler {client.scheduler.address} has no worker yet; start some "
                                  "(e.g. cluster.scale(jobs=...)) and wait for them before running the cohort")
            yield client, threads or _slots(info), len(info)
            return
        cores = _cores()
        n = workers or max(1, min(tasks, cores if threads is None else cores // threads))
        with dask.config.set({"distributed.scheduler.allowed-failures": 1}):   # a subject that kills workers: once more
            cluster = stack.enter_context(LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                                       memory_limit=memory, dashboard_address=None,
                                                       silence_logs=logging.ERROR))
        yield stack.enter_context(Client(cluster)), threads or max(1, cores // n), n


def _slots(info) -> dict[str, int]:
    """Per worker host, how many tasks it runs at once (its workers' threads): a task's cores are the host's / that."""
    slots: Counter = Counter()
    for worker in info:
        slots[worker["host"]] += worker["nthreads"]
    return dict(slots)


