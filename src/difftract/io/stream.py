"""Streaming tractogram writer: chunks of streamlines in, one .trx/.trk/.tck out, bounded memory.

A tracker produces streamlines chunk by chunk; holding a million of them to write at the
end would cost gigabytes. :func:`open_writer` spools each chunk, converted to RAS mm, to
raw files in a staging folder beside the output, then writes the final file from the
spool (memory-mapped) when it is closed:

- ``.trx``: the spool already has TRX's layout (``positions.3.float32``, ``offsets.uint64``
  with the closing offset, ``header.json``), so it is zipped uncompressed as trx-python's
  ``save`` would (with trx-python's own ``zip_from_folder``);
- ``.trk`` and ``.tck``: nibabel writes them from a lazy tractogram over the spool.

The output appears (renamed into place) only when complete; an exception inside the
``with`` block, or :meth:`StreamWriter.abort`, leaves nothing behind.
"""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import nibabel as nib
import numpy as np
from nibabel.affines import apply_affine
from nibabel.streamlines import TckFile, TrkFile

from ..errors import ConfigError
from .atomic import atomic_file, check_output, staging_dir
from .sidecar import sidecar_path, write_sidecar
from .tractogram import FORMATS, _checked_grid, trk_header

POSITIONS, OFFSETS = "positions.3.float32", "offsets.uint64"


class StreamWriter:
    """Append streamlines (voxel coordinates) chunk by chunk; :meth:`close` writes the file."""

    def __init__(self, path: str | Path, affine: np.ndarray, dimensions, force: bool = False):
        self.path = Path(path)
        self.format = self.path.suffix.lower()
        if self.format not in FORMATS:
            raise ConfigError(f"{self.path}: unsupported tractogram format; use one of {', '.join(FORMATS)}")
        check_output(self.path, force)
        self.force = force
        self.affine, self.dimensions, self.voxel_sizes = _checked_grid(affine, dimensions)
        self._staging = staging_dir(self.path, "spool")   # removed by the next run if this one is killed
        self.spool = self._staging / "spool"
        self.spool.mkdir()
        self._positions = open(self.spool / POSITIONS, "wb")
        self._lengths = open(self.spool / "lengths.int64", "wb")
        self.n_streamlines = 0
        self.n_points = 0
        self.sidecar: dict | None = None   # set before closing to write a provenance sidecar

    def write(self, points: Any, lengths: Any) -> None:
        """Append streamlines given packed: ``points (P, 3)`` voxel coordinates, ``lengths (S,)``."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
        if lengths.sum() != len(points) or (lengths < 0).any():
            raise ConfigError(f"streamline lengths add up to {lengths.sum()}, not the {len(points)} points given")
        apply_affine(self.affine, points).astype("<f4").tofile(self._positions)
        lengths.astype("<i8").tofile(self._lengths)
        self.n_streamlines += len(lengths)
        self.n_points += len(points)

    def close(self, sidecar: dict | None = None) -> Path:
        """Write the output from the spool, move it into place, and remove the spool."""
        sidecar = self.sidecar if sidecar is None else sidecar
        try:
            self._positions.close()
            self._lengths.close()
            if sidecar is not None:
                check_output(sidecar_path(self.path), self.force)
            with atomic_file(self.path, force=self.force) as tmp:
                {".trx": self._finish_trx, ".trk": self._finish_nibabel,
                 ".tck": self._finish_nibabel}[self.format](tmp)
            if sidecar is not None:
                write_sidecar(self.path, sidecar, force=self.force)
        finally:
            shutil.rmtree(self._staging, ignore_errors=True)
        return self.path

    def abort(self) -> None:
        """Drop everything written so far."""
        self._positions.close()
        self._lengths.close()
        shutil.rmtree(self._staging, ignore_errors=True)

    # ------------------------------------------------------------------ formats
    def _spooled(self) -> tuple[np.ndarray, np.ndarray]:
        lengths = np.fromfile(self.spool / "lengths.int64", dtype="<i8")
        if self.n_points == 0:
            return np.zeros((0, 3), np.float32), lengths
        return np.memmap(self.spool / POSITIONS, dtype="<f4", mode="r", shape=(self.n_points, 3)), lengths

    def _finish_trx(self, tmp: Path) -> None:
        from trx.trx_file_memmap import zip_from_folder  # imported here: it pulls in dipy

        lengths = np.fromfile(self.spool / "lengths.int64", dtype="<i8")
        (self.spool / "lengths.int64").unlink()
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype("<u8")   # with the closing offset
        if self.n_streamlines:
            offsets.tofile(self.spool / OFFSETS)
        else:
            (self.spool / POSITIONS).unlink()
        header = {"VOXEL_TO_RASMM": self.affine.tolist(), "DIMENSIONS": list(self.dimensions),
                  "NB_VERTICES": int(self.n_points), "NB_STREAMLINES": int(self.n_streamlines)}
        (self.spool / "header.json").write_text(json.dumps(header))
        zip_from_folder(str(self.spool), str(tmp))

    def _finish_nibabel(self, tmp: Path) -> None:
        positions, lengths = self._spooled()
        offsets = np.cumsum(lengths) - lengths

        def streamlines():
            for start, n in zip(offsets.tolist(), lengths.tolist()):
                yield np.asarray(positions[start:start + n])

        lazy = nib.streamlines.LazyTractogram(streamlines, affine_to_rasmm=np.eye(4))
        if self.format == ".trk":
            TrkFile(lazy, header=trk_header(self.affine, self.dimensions, self.voxel_sizes)).save(str(tmp))
        else:
            TckFile(lazy).save(str(tmp))


@contextmanager
def open_writer(path: str | Path, affine: np.ndarray, dimensions, force: bool = False,
                sidecar: dict | None = None) -> Iterator[StreamWriter]:
    """A :class:`StreamWriter` that writes ``path`` (and its ``sidecar``) when the block ends cleanly."""
    writer = StreamWriter(path, affine, dimensions, force=force)
    writer.sidecar = sidecar
    try:
        yield writer
    except BaseException:
        writer.abort()
        raise
    writer.close()
