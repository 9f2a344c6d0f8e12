"""Atomic outputs: write to a temporary path beside the target, then rename.

A failed command leaves nothing behind, and an existing output is only replaced when
``force`` is given. Files and whole directories are supported.

Every temporary folder is a hidden *staging* folder beside its target, named
``.NAME.KIND-PID-XXXX`` and holding an owner record (host, PID, process start time). A run
that is killed outright (SIGKILL, the kernel's OOM killer) cannot clean up after itself,
so the next command that writes ``NAME`` removes the staging folders whose owner is no
longer alive on this host (:func:`remove_stale`). A folder owned by a live process, or
by another host (a cohort on shared storage), is left alone.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ..errors import ConfigError, InputError, OutputExistsError

log = logging.getLogger("difftract")

OWNER = ".difftract-owner.json"
STAGING_KINDS = ("tmp", "spool", "partial", "old")


# ---------------------------------------------------------------------- owners
def _start_ticks(pid: int) -> int | None:
    """A process's start time (clock ticks since boot, /proc/PID/stat field 22), if readable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _owner_record() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_ticks(os.getpid())}


def _alive(pid: int, start: int | None) -> bool:
    """Whether process ``pid`` (started at ``start`` ticks, when known) still runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:     # exists, owned by someone else
        pass
    now = _start_ticks(pid)
    return start is None or now is None or now == start   # another start time: the PID was reused


def _stale_owner(folder: Path, pid_in_name: int) -> dict | None:
    """The owner record of a staging folder whose owner is gone; None when it may be alive."""
    try:
        owner = json.loads((folder / OWNER).read_text())
        pid, start, host = int(owner["pid"]), owner.get("start"), owner.get("host")
    except (OSError, ValueError, KeyError, TypeError):   # killed before the record was written, or older
        pid, start, host = pid_in_name, None, socket.gethostname()
    if host != socket.gethostname() or _alive(pid, start):
        return None
    return {"pid": pid, "host": host}


def remove_stale(path: str | Path) -> list[Path]:
    """Remove the staging folders of ``path`` left by runs that were killed; returns them."""
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.({'|'.join(STAGING_KINDS)})-(\d+)(-.*)?$")
    removed = []
    for entry in parent.iterdir():
        match = pattern.match(entry.name)
        if match is None or not entry.is_dir() or entry.is_symlink():
            continue
        owner = _stale_owner(entry, int(match.group(2)))
        if owner is None:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        log.info("removed %s, left behind by a run that was killed (pid %d)", entry, owner["pid"])
        removed.append(entry)
    return removed


def staging_dir(path: str | Path, kind: str = "tmp") -> Path:
    """A new hidden staging folder beside ``path`` (parents created), with its owner record."""
    path = Path(path)
    if kind not in STAGING_KINDS:
        raise ValueError(f"unknown staging kind {kind!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.{kind}-{os.getpid()}-", dir=path.parent))
    (folder / OWNER).write_text(json.dumps(_owner_record()))
    return folder


# ---------------------------------------------------------------------- checks
def _writable_ancestor(path: Path) -> Path:
    """The nearest existing folder above ``path``, checked to be a folder we can write in."""
    for parent in path.absolute().parents:
        if parent.exists():
            break
    if not parent.is_dir():
        raise InputError(path, f"cannot create the output: {parent} is a file, not a folder")
    try:   # a real probe: os.access is wrong for root, read-only mounts and ACLs
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise InputError(path, f"cannot write the output: {parent} is not writable ({exc.strerror})") from None
    return parent


def check_output(path: str | Path, force: bool = False, inputs: Sequence[str | Path] = ()) -> Path:
    """Return ``path`` as a Path after checking that it can be written, before any work is done.

    Refused: an existing output without ``force``; a path whose nearest existing folder
    is a file or not writable; the path of one of ``inputs``, or a folder holding one. Missing parent folders are
    fine (every command creates them when it writes). Staging folders that killed runs
    left for this output are removed.
    """
    path = Path(path)
    _writable_ancestor(path)
    target = Path(os.path.realpath(path))
    for given in inputs:
        given = Path(given)
        if os.path.abspath(path) == os.path.abspath(given) or (path.exists() and given.exists() and path.samefile(given)):
            raise ConfigError(f"{path}: the output would overwrite the input {given}; choose another output")
        if target in Path(os.path.realpath(given)).parents:   # an output folder replaced whole with --force
            raise ConfigError(f"{path}: the output folder holds the input {given} and would replace it; "
                              "choose another output")
    if path.exists() and not force:
        raise OutputExistsError(path)
    remove_stale(path)
    return path


def check_outputs(paths: Sequence[str | Path], force: bool = False,
                  inputs: Sequence[str | Path] = ()) -> list[Path]:
    """Validate several output files at once: distinct, not directories, writable, not inputs (see :func:`check_output`)."""
    paths = [Path(p) for p in paths]
    seen: dict[Path, Path] = {}
    for path in paths:
        key = Path(os.path.abspath(path))       # normalised: a/../b is b
        if key in seen:
            raise ConfigError(f"two outputs would be written to {path} (an output or its JSON sidecar); "
                              "choose distinct names")
        seen[key] = path
        check_output(path, force, inputs)
        if path.is_dir():
            raise InputError(path, "output is an existing directory, expected a file path")
    return paths


# ---------------------------------------------------------------------- writers
@contextmanager
def atomic_file(path: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary file path with the same name as ``path``; rename on success.

    The temporary file keeps the target's file name (inside a hidden staging folder in
    the same directory), so format detection by extension still works.
    """
    path = check_output(path, force)
    if path.is_dir():
        raise InputError(path, "output is an existing directory, expected a file path")
    staging = staging_dir(path)
    try:
        tmp = staging / path.name
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"{path}: nothing was written to the temporary file")
        os.replace(tmp, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def replace_directory(new: Path, path: Path) -> None:
    """Put the finished folder ``new`` at ``path``; an old ``path`` is removed only once ``new`` is in place."""
    old = None
    if path.exists():
        old = staging_dir(path, "old")
        os.replace(path, old / path.name)
    os.replace(new, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_directory(path: str | Path, force: bool = False, kind: str = "tmp") -> Iterator[Path]:
    """Yield an empty temporary directory; on success it replaces ``path``.

    The temporary directory has ``path``'s name (inside a staging folder). With ``force``
    an existing directory is moved aside first and removed only after the new one is in
    place. On failure, the parent folders created for ``path`` are removed again when empty.
    """
    path = check_output(path, force)
    created = _missing_parents(path)
    staging = staging_dir(path, kind)
    done = False
    try:
        tmp = staging / path.name
        tmp.mkdir()
        yield tmp
        replace_directory(tmp, path)
        done = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not done:
            _remove_empty(created)


def _missing_parents(path: Path) -> list[Path]:
    """The folders above ``path`` that do not exist yet, innermost first."""
    missing = []
    for parent in path.absolute().parents:
        if parent.exists():
            break
        missing.append(parent)
    return missing


def _remove_empty(folders: Sequence[Path]) -> None:
    """Remove ``folders`` (innermost first) that a failed command created, as long as they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:   # not empty (someone else wrote there meanwhile) or already gone
            return


@contextmanager
def atomic_outputs(paths: Sequence[str | Path], force: bool = False) -> Iterator[Callable[[str | Path], Path]]:
    """Stage several output files and put them in place together, only if all were written.

    Yields ``stage(path) -> temporary path`` (same file name, in a hidden staging folder
    beside the target). Every file written into a staging folder must be one of
    ``paths``; on success all are renamed into place, on failure none is.
    """
    targets = {p.absolute() for p in check_outputs(paths, force)}
    stagings: dict[Path, Path] = {}

    def stage(path: str | Path) -> Path:
        path = Path(path).absolute()
        if path not in targets:
            raise ValueError(f"{path} was not declared as an output")
        if path.parent not in stagings:
            stagings[path.parent] = staging_dir(path)
        return stagings[path.parent] / path.name

    try:
        yield stage
        staged = [(f, parent / f.name) for parent, staging in stagings.items()
                  for f in staging.iterdir() if f.name != OWNER]
        for f, target in staged:
            if target not in targets:
                raise RuntimeError(f"{target}: written but not declared as an output")
        for f, target in staged:
            os.replace(f, target)
    finally:
        for staging in stagings.values():
            shutil.rmtree(staging, ignore_errors=True)
