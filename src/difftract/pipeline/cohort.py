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

import csv
import html
import io
import json
import logging
import os
import threading
import time
from collections import Counter
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, InputError
from .console import Console
from .run import RunOptions, run_subject

log = logging.getLogger("difftract")

STATUSES = ("done", "skipped", "failed", "pending")
COLUMNS = ("name", "status", "error", "streamlines", "mean_length_mm", "seconds", "peak_rss_gb", "peak_gpu_gb",
           "VC", "VB", "IC", "NC", "OL", "OR", "F1", "subject", "out")
# the Tractometer's figures in the cohort table: (column, key of scores.json), as the run report shows them
SCORE_KEYS = (("VC", "VS_ratio"), ("VB", "VB"), ("IC", "IC_ratio"), ("NC", "NC_ratio"), ("OL", "mean_OL"),
              ("OR", "mean_OR_vs"), ("F1", "mean_f1"))


@dataclass
class CohortResult:
    """One row per subject (:data:`COLUMNS`; ``status`` one of done, skipped, failed), and where they were written."""

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
        return dict(Counter(r["status"] for r in self.rows))


# ---------------------------------------------------------------------- the subjects
def find_subjects(subjects: str | Path, out: str | Path | None = None) -> list[tuple[str, Path]]:
    """``(name, folder)`` of each subject: the sub-folders of a folder, or the lines of a text file.

    A list file holds one subject folder per line (blank lines and ``#`` comments skipped;
    relative paths are taken from the list file's folder). Hidden sub-folders, and ``out``
    when it lies inside the folder, are not subjects. A subject's name is its folder's name,
    or, when two share one (HCP's ``ID/T1w/Diffusion``), its path below their common folder
    joined with ``_``.
    """
    subjects = Path(subjects)
    if subjects.is_dir():
        if any((subjects / n).exists() for n in ("dwi.nii.gz", "dwi.nii", "data.nii.gz", "data.nii")):
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
    """Whether ``out`` holds a finished run of ``options``: its report and every tractogram."""
    return (out / "report.html").is_file() and all((out / options.tracks_name(m)).is_file() for m in options.methods)


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

    ``torch_threads`` is the number of torch threads, or, per worker host, the host's cores
    divided among the tasks it runs at once (see :func:`_threads_by_host`).
    """
    import torch

    threads = torch_threads if isinstance(torch_threads, int) else _threads_here(torch_threads)
    torch.set_num_threads(threads)
    buffer = io.StringIO()
    handler = _ThreadHandler(buffer)
    log.addHandler(handler)
    previous_level = log.level
    log.setLevel(min(log.getEffectiveLevel(), logging.INFO))
    gpu = _uses_gpu(options)
    _reset_peak(gpu)
    start = time.perf_counter()
    row = {"name": name, "subject": str(directory), "out": str(out)}
    try:
        summary = run_subject(directory, out, options, console=_LogConsole(stream=buffer), force=force)
        row.update(status="done", error="", **_figures(summary.streamlines, summary.mean_length_mm, summary.scores,
                                                       options.methods))
    except Exception as exc:                # noqa: BLE001 - any failure is this subject's row, not the cohort's end
        message = str(exc).strip().splitlines()
        row.update(status="failed", error=f"{type(exc).__name__}: {message[0] if message else ''}".rstrip(": "))
        buffer.write(f"difftract: error: {row['error']}\n")
    finally:
        log.removeHandler(handler)
        log.setLevel(previous_level)
    row.update(seconds=round(time.perf_counter() - start, 2), torch_threads=threads, **_peaks(gpu))
    _write_log(out.parent / "logs" / f"{name}.log", buffer.getvalue())
    return row


def _uses_gpu(options: RunOptions) -> bool:
    try:
        return options.compute.torch_device.type == "cuda"
    except Exception:                        # noqa: BLE001 - an absent device fails in run_subject, with its message
        return False


def _threads_here(by_host: dict[str, int]) -> int:
    from distributed import get_worker

    worker = get_worker()
    host = worker.address.rsplit(":", 1)[0]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return by_host.get(host) or max(1, cores // worker.state.nthreads)


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


def _write_log(path: Path, text: str) -> None:
    from ..io.atomic import atomic_file

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, force=True) as tmp:
        tmp.write_text(text)


# ---------------------------------------------------------------------- figures of a row
def _figures(streamlines: dict, mean_length: dict, scores: dict, methods: tuple[str, ...]) -> dict:
    """A row's figures; with several methods every column is suffixed ``_METHOD``."""
    row = {}
    for method in methods:
        suffix = "" if len(methods) == 1 else f"_{method}"
        row[f"streamlines{suffix}"] = streamlines.get(method, "")
        length = mean_length.get(method)
        row[f"mean_length_mm{suffix}"] = "" if length is None else round(length, 2)
        for column, key in SCORE_KEYS:
            value = (scores.get(method) or {}).get(key, "")
            row[f"{column}{suffix}"] = round(value, 4) if isinstance(value, float) else value
    return row


def _skipped_row(name: str, directory: Path, out: Path, options: RunOptions, previous: dict | None) -> dict:
    """The row of a finished subject, read from its files; its time and memory from the run that made it."""
    streamlines, lengths, scores = {}, {}, {}
    for method in options.methods:
        sidecar = _read_json((out / options.tracks_name(method)).with_suffix(".json"))
        streamlines[method] = (sidecar or {}).get("n_streamlines", "")
        scores[method] = _read_json(out / options.scores_name(method))
    row = {"name": name, "status": "skipped", "error": "", "subject": str(directory), "out": str(out),
           **_figures(streamlines, lengths, scores, options.methods)}
    for key in ("seconds", "peak_rss_gb", "peak_gpu_gb", "torch_threads",
                *(c for c in previous or {} if c.startswith("mean_length"))):
        row[key] = (previous or {}).get(key, "")
    return row


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


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
        Address of a running Dask scheduler (``tcp://HOST:8786``) instead of a local cluster.
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
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(out, "the cohort's output must be a folder; this is a file")
    listed = find_subjects(subjects, out)
    out.mkdir(parents=True, exist_ok=True)
    previous = {r.get("name"): r for r in (_read_json(out / "cohort.json") or {}).get("subjects", [])}
    rows: dict[str, dict] = {}
    todo = []
    for name, directory in listed:
        if not force and is_complete(out / name, options):
            rows[name] = _skipped_row(name, directory, out / name, options, previous.get(name))
        else:
            rows[name] = {"name": name, "status": "pending", "error": "", "subject": str(directory),
                          "out": str(out / name)}
            todo.append((name, directory))
    console.say(f"cohort: {len(listed)} subjects, {len(listed) - len(todo)} finished already (skipped), "
                f"{len(todo)} to run -> {out}")
    result = CohortResult(out, list(rows.values()))
    if todo:
        with _connect(client, scheduler, workers, threads_per_worker, memory, len(todo)) as (dask_client, threads, n):
            result.workers = n
            result.torch_threads = threads if isinstance(threads, int) else None
            console.say(f"cohort: {n} workers" + (f", {threads} torch threads each" if isinstance(threads, int) else "")
                        + (f", at {dask_client.scheduler.address}" if client is not None or scheduler else ""))
            _write_tables(result, options, time.perf_counter() - start)
            _run_all(dask_client, todo, rows, result, out, options, threads, force, console, start)
    result.rows, result.seconds = list(rows.values()), time.perf_counter() - start
    result.tables = _write_tables(result, options, result.seconds)
    counts = result.counts()
    console.say(f"cohort: {', '.join(f'{counts[s]} {s}' for s in STATUSES if counts.get(s))} in "
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
            line = (f"{name}: done, {row.get('streamlines', '')} streamlines, {row.get('seconds', 0):.0f} s"
                    if row["status"] == "done" else f"{name}: failed: {row['error']}")
            console.say(line)
            result.rows = list(rows.values())
            _write_tables(result, options, time.perf_counter() - start)
    finally:
        bar.close()
        for future in futures:
            future.cancel()


def _lost_task(exc: Exception) -> str:
    from distributed import KilledWorker

    if isinstance(exc, KilledWorker):
        return ("KilledWorker: the worker running it died (out of memory? give more --memory-per-worker, "
                "or fewer --workers)")
    message = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {message[0] if message else ''}".rstrip(": ")


def _memory_limit(value: str | int | None):
    if value in (None, 0, "0", "auto"):
        return value or 0
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
    """``(client, torch threads or tasks at once per host, workers)``: the given client, a scheduler's, or a local cluster's."""
    import dask
    from distributed import Client, LocalCluster

    with ExitStack() as stack:
        if client is None and scheduler is not None:
            client = stack.enter_context(Client(scheduler))
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


# ---------------------------------------------------------------------- the tables and the page
def _write_tables(result: CohortResult, options: RunOptions, seconds: float) -> dict[str, Path]:
    """``cohort.csv``, ``cohort.json`` and ``cohort.html`` in the cohort's folder, each written atomically."""
    from ..io.atomic import atomic_file
    from ..io.sidecar import write_json

    out = result.out
    columns = list(dict.fromkeys([c for c in COLUMNS if any(c in r for r in result.rows)]
                                 + [c for r in result.rows for c in r if c not in COLUMNS]))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, restval="", extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    rows = [{c: r.get(c, "") for c in columns} for r in result.rows]
    writer.writerows(rows)
    with atomic_file(out / "cohort.csv", force=True) as tmp:
        tmp.write_text(buffer.getvalue())
    record = {"counts": result.counts(), "seconds": round(seconds, 1), "workers": result.workers,
              "torch_threads": result.torch_threads, "methods": list(options.methods),
              "peak_rss_gb": "peak resident memory of the worker process while it ran the subject (Linux VmHWM, "
                             "reset at the task's start; includes the worker's own 0.3-0.5 GB; with several tasks per worker process, the process's peak while this one ran)",
              "subjects": rows}
    write_json(out / "cohort.json", record, force=True)
    page = _page(result, options)
    with atomic_file(out / "cohort.html", force=True) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return {"csv": out / "cohort.csv", "json": out / "cohort.json", "html": out / "cohort.html"}


def _page(result: CohortResult, options: RunOptions) -> str:
    """One row per subject: a thumbnail of its streamlines, its figures, a link to its report (paths relative)."""
    from ..viz.report import STYLE

    method = options.methods[0]
    suffix = "" if len(options.methods) == 1 else f"_{method}"
    figures = ["streamlines", "mean_length_mm", "seconds", "peak_rss_gb", *(c for c, _ in SCORE_KEYS)]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ("subject", "status", method, *figures))
    body = []
    for r in result.rows:
        name = html.escape(r["name"])
        thumb = Path(r["out"]) / f"report_tracks_{method}.png"
        cells = [f'<a href="{name}/report.html">{name}</a>' if r["status"] in ("done", "skipped") else name,
                 html.escape(r["status"]) + (f"<br><small>{html.escape(r['error'])}</small>" if r["error"] else ""),
                 f'<a href="{name}/report.html"><img src="{name}/{thumb.name}" width="160" loading="lazy" '
                 f'alt="{name}: streamlines"></a>' if thumb.is_file() else ""]
        cells += [html.escape(str(r.get(c if c in ("seconds", "peak_rss_gb") else c + suffix, ""))) for c in figures]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    counts = ", ".join(f"{n} {s}" for s, n in result.counts().items())
    title = f"difftract cohort: {len(result.rows)} subjects ({', '.join(options.methods)})"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1><p>{html.escape(counts)}; "
            f"figures in <a href=\"cohort.csv\">cohort.csv</a> and <a href=\"cohort.json\">cohort.json</a>, "
            f"each subject's log in <a href=\"logs/\">logs/</a></p><table><tr>{head}</tr>{''.join(body)}</table>"
            "</body></html>\n")
