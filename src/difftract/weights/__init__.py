"""Pretrained weights shipped inside the package, checked against ``SHA256SUMS``.

Each line of ``SHA256SUMS`` is ``<sha256>  <file>`` (``sha256sum`` output). A shipped file
whose checksum does not match, or that is missing from the list, is an error; so is a
``--weights`` file that does not exist. How each file was trained is in ``README.md`` here.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import InputError

WEIGHTS_DIR = Path(__file__).resolve().parent
SUMS = WEIGHTS_DIR / "SHA256SUMS"
SHIPPED = {"qcgdti": "qcgdti.pt", "ddtracking": "ddtracking.pt"}


def sha256(path: str | Path) -> str:
    """SHA256 of a file, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
