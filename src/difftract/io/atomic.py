"""Atomic outputs: write to a temporary path beside the target, then rename.

A failed command leaves nothing behind, and an existing output is only replaced when
``force`` is given. Files and whole directories are supported.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ..errors import ConfigError, InputError, OutputExistsError


def check_output(path: str | Path, force: bool = False) -> Path:
    """Return ``path`` as a Path, refusing it if it exists (without ``force``) or cannot be made."""
    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(path)
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(path, f"cannot create output: {parent} is a file, not a directory")
            break
    return path


def _staging_dir(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))


@contextmanager
def atomic_file(path: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary file path with the same name as ``path``; rename on success.

    The temporary file keeps the target's file name (inside a hidden staging folder in
    the same directory), so format detection by extension still works.
    """
    path = check_output(path, force)
    if path.is_dir():
        raise InputError(path, "output is an existing directory, expected a file path")
    staging = _staging_dir(path)
    try:
        tmp = staging / path.name
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"{path}: nothing was written to the temporary file")
        os.replace(tmp, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def atomic_directory(path: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield an empty temporary directory; on success it replaces ``path``.

    With ``force`` an existing directory is moved aside first and removed only after
    the new one is in place.
    """
    path = check_output(path, force)
    staging = _staging_dir(path)
    try:
        tmp = staging / path.name
        tmp.mkdir()
        yield tmp
        old = None
        if path.exists():
            old = staging / f"{path.name}.old"
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def check_outputs(paths: Sequence[str | Path], force: bool = False) -> list[Path]:
    """Validate several output files at once: distinct, not directories, not existing without ``force``."""
    paths = [Path(p) for p in paths]
    seen: dict[Path, Path] = {}
    for path in paths:
        key = path.absolute()
        if key in seen:
            raise ConfigError(f"two outputs would be written to {path} (an output or its JSON sidecar); "
                              "choose distinct names")
        seen[key] = path
        check_output(path, force)
        if path.is_dir():
            raise InputError(path, "output is an existing directory, expected a file path")
    return paths


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
            stagings[path.parent] = _staging_dir(path)
        return stagings[path.parent] / path.name

    try:
        yield stage
        staged = [(f, parent / f.name) for parent, staging in stagings.items() for f in staging.iterdir()]
        for f, target in staged:
            if target not in targets:
                raise RuntimeError(f"{target}: written but not declared as an output")
        for f, target in staged:
            os.replace(f, target)
    finally:
        for staging in stagings.values():
            shutil.rmtree(staging, ignore_errors=True)
