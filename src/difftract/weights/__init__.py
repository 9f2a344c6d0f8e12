"""Pretrained weights shipped inside the package, checked against ``SHA256SUMS``.

Each line of ``SHA256SUMS`` is ``<sha256>  <file>`` (``sha256sum`` output). A shipped file
whose checksum does not match, or that is missing from the list, is an error; so is a
``--weights`` file that does not exist. How each file was trained, and the one command that
rebuilds it (``scripts/build_weights.py``), is in ``README.md`` here; that script installs a
rebuilt file with :func:`install`, which rewrites only that file's line of ``SHA256SUMS``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..io.atomic import atomic_file
from ..io.checksum import sha256

WEIGHTS_DIR = Path(__file__).resolve().parent
SUMS = WEIGHTS_DIR / "SHA256SUMS"
SHIPPED = {"qcgdti": "qcgdti.pt", "ddtracking": "ddtracking.pt", "ddtracking_fast": "ddtracking_fast.pt"}
# the model each shipped file holds, where it is not the file's own name
MODELS = {"ddtracking_fast": "ddtracking"}


def expected_sums() -> dict[str, str]:
    """``file name -> sha256`` from ``SHA256SUMS``."""
    if not SUMS.exists():
        return {}
    sums = {}
    for line in SUMS.read_text().splitlines():
        if line.strip():
            parts = line.split(maxsplit=1)
            if len(parts) != 2:
                raise InputError(SUMS, f"malformed line {line!r} (expected '<sha256>  <file>')")
            sums[parts[1].strip().lstrip("*")] = parts[0]
    return sums


def shipped_weights(name: str) -> Path:
    """Path of the shipped weights for model ``name``, after checking their SHA256."""
    if name not in SHIPPED:
        raise InputError(None, f"no shipped weights for {name!r}; known: {', '.join(SHIPPED)}")
    path = WEIGHTS_DIR / SHIPPED[name]
    if not path.exists():
        raise InputError(path, "shipped weights are missing from this installation (pass --weights)")
    expected = expected_sums().get(path.name)
    if expected is None:
        raise InputError(SUMS, f"no checksum listed for {path.name}")
    actual = sha256(path)
    if actual != expected:
        raise InputError(path, f"checksum mismatch: SHA256 {actual} but SHA256SUMS lists {expected} "
                               "(the file is corrupt or was replaced)")
    return path


def set_checksum(file_name: str, digest: str, sums: str | Path | None = None) -> Path:
    """Set ``file_name``'s line of ``SHA256SUMS`` to ``digest``, keeping every other line.

    The line is replaced where it stands (or appended); the list is written atomically.
    """
    sums = Path(sums) if sums is not None else SUMS
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise InputError(sums, f"not a SHA256 hex digest: {digest!r}")
    lines, found = [], False
    if sums.exists():
        for line in sums.read_text().splitlines():
            parts = line.split(maxsplit=1)
            if len(parts) == 2 and parts[1].strip().lstrip("*") == file_name:
                if not found:
                    lines.append(f"{digest}  {file_name}")
                found = True
            elif line.strip():
                lines.append(line)
    if not found:
        lines.append(f"{digest}  {file_name}")
    with atomic_file(sums, force=True) as tmp:
        tmp.write_text("".join(line + "\n" for line in lines))
    return sums


_ABSOLUTE = re.compile(r"^(/|~|\\\\|[A-Za-z]:[\\/])")


def absolute_paths(value: Any) -> list[str]:
    """Every string in a JSON-like value (keys too) that reads as an absolute path."""
    if isinstance(value, str):
        return [value] if _ABSOLUTE.match(value) else []
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in absolute_paths(k) + absolute_paths(v)]
    if isinstance(value, (list, tuple)):
        return [p for v in value for p in absolute_paths(v)]
    return []


def install(source: str | Path, name: str, meta_updates: dict | None = None) -> str:
    """Install weights file ``source`` as the shipped weights of model ``name``; its new SHA256.

    The file is re-saved with its ``meta`` updated by ``meta_updates`` (state dict and
    training record unchanged), then only its line of ``SHA256SUMS`` is rewritten. Metadata
    holding an absolute path (a folder of the machine that trained it) is refused.
    ``source`` may be the shipped file itself (to update its metadata).
    """
    from ..training.files import load_weights, save_weights

    if name not in SHIPPED:
        raise InputError(None, f"no shipped weights for {name!r}; known: {', '.join(SHIPPED)}")
    blob = load_weights(source)
    meta = {**(blob.get("meta") or {}), **(meta_updates or {})}
    model = MODELS.get(name, name)
    if meta.get("model") != model:
        raise InputError(source, f"not {model} weights (model is {meta.get('model')!r})")
    bad = absolute_paths(meta)
    if bad:
        raise InputError(source, f"weights metadata holds absolute paths ({', '.join(map(repr, bad[:3]))}); "
                                 "train from inside the work folder so subjects are recorded relative to it")
    dest = WEIGHTS_DIR / SHIPPED[name]
    save_weights(dest, blob["state_dict"], meta, blob.get("train"), force=True)
    digest = sha256(dest)
    set_checksum(dest.name, digest)
    return digest
