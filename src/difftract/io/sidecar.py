"""JSON provenance sidecars written beside every output.

A sidecar records what made a file: difftract's version, the command and its
parameters, the seed, the inputs (names and sizes) and library versions. Its name
follows BIDS: the output's name with its data extension replaced by ``.json``
(``fa.nii.gz`` -> ``fa.json``, ``tracks.trx`` -> ``tracks.json``).
"""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_file

DATA_SUFFIXES = (".nii.gz", ".nii", ".trk", ".tck", ".trx", ".png", ".html", ".pt",
                 ".bval", ".bvec", ".txt", ".npz", ".h5")


def data_stem(path: str | Path) -> str:
    """A data file's name without its (possibly double) suffix: ``fa.nii.gz`` -> ``fa``."""
    name = Path(path).name
    for suffix in DATA_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def sidecar_path(path: str | Path) -> Path:
    """The JSON sidecar's path for an output ``path``."""
    return Path(path).with_name(data_stem(path) + ".json")


_FINAL_PATHS: list[tuple[str, str]] = []   # (staging folder, final folder), innermost last


@contextmanager
def final_paths(staging: str | Path, final: str | Path) -> Iterator[None]:
    """Within this block, records name ``final`` where files are being written into ``staging``.

    A command that builds its outputs in a staging folder (``run``, ``demo``) renames it
    at the end; the sidecars written meanwhile must name where the files will be, not
    where they were built.
    """
    pair = (str(staging), str(final))
    _FINAL_PATHS.append(pair)
    try:
        yield
    finally:
        _FINAL_PATHS.remove(pair)


def shown_path(text: str) -> str:
    """``text`` with every staging folder of :func:`final_paths` replaced by its final one."""
    for staging, final in reversed(_FINAL_PATHS):
        text = text.replace(staging, final)
    return text


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("difftract", "torch", "numpy", "dipy", "nibabel", "trx-python"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (Path, str)):
        return shown_path(str(value))
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def provenance(command: str, params: dict[str, Any] | None = None, seed: int | None = None,
               inputs: list[str | Path] | tuple = (), **extra: Any) -> dict[str, Any]:
    """Build a provenance record.

    Parameters
    ----------
    command : str
        The difftract command or API function (e.g. ``"simulate"``).
    params : dict, optional
        Every parameter that shaped the output.
    seed : int, optional
        The random seed.
    inputs : sequence of paths
        Input files; their names and sizes are recorded.
    **extra
        Anything else worth keeping (weights checksum, SH basis, summaries).
    """
    versions = _versions()
    record: dict[str, Any] = {
        "difftract_version": versions["difftract"],
        "command": command,
        "argv": list(sys.argv),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seed": seed,
        "params": params or {},
        "inputs": [
            {"path": str(p), "size_bytes": Path(p).stat().st_size if Path(p).exists() else None}
            for p in inputs
        ],
        "versions": versions,
    }
    record.update(extra)
    return _jsonable(record)


def write_json(path: str | Path, record: dict[str, Any], force: bool = False) -> Path:
    """Write ``record`` as indented JSON to ``path`` atomically."""
    with atomic_file(path, force=force) as tmp:
        tmp.write_text(json.dumps(_jsonable(record), indent=2, sort_keys=False) + "\n")
    return Path(path)


def write_sidecar(output: str | Path, record: dict[str, Any], force: bool = False) -> Path:
    """Write the provenance ``record`` as the sidecar of ``output``."""
    return write_json(sidecar_path(output), record, force=force)
