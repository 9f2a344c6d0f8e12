"""Tractogram files (.trk, .tck, .trx): voxel space in memory, RAS mm on disk.

In memory, streamline points are float32 voxel coordinates in which integer values are
voxel centres (the NIfTI/DIPY convention). On disk every format holds RAS mm; the
conversion goes through the reference grid's affine. ``.trk`` and ``.trx`` carry their
grid, ``.tck`` does not and needs a reference image to be read.

Per-streamline and per-point data come back from a file as ``(n,)`` when they have a
single column (the formats store every datum as 2-D).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.affines import apply_affine, voxel_sizes
from nibabel.orientations import aff2axcodes
from nibabel.spatialimages import SpatialImage
from nibabel.streamlines import ArraySequence, TckFile, TrkFile
from nibabel.streamlines.trk import Field

from ..errors import ConfigError, DifftractError, DifftractWarning, InputError
from .atomic import atomic_file, check_output
from .dwi import DWI
from .sidecar import sidecar_path, write_sidecar

FORMATS = (".trk", ".tck", ".trx")
Grid = tuple[np.ndarray, tuple[int, int, int], tuple[float, float, float]]


# An ArraySequence keeps all points in one (N, k) array plus offsets and lengths. These
# two helpers are the only places that touch those private attributes, so every
# conversion below is one vectorised step over the concatenated data.
def _flatten(seq: ArraySequence) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated rows and per-item lengths of ``seq`` (compacted if it is a view)."""
    lengths = np.asarray(seq._lengths, dtype=np.int64)
    offsets = np.asarray(seq._offsets, dtype=np.int64)
    if len(seq._data) != lengths.sum() or not np.array_equal(offsets, np.cumsum(lengths) - lengths):
        seq = seq.copy()
    return np.asarray(seq._data), lengths


def _sequence(data: np.ndarray, lengths: np.ndarray, offset_dtype: type = np.intp) -> ArraySequence:
    """An ArraySequence over ``data`` cut into consecutive runs of ``lengths`` rows."""
    seq = ArraySequence()
    seq._data = data
    seq._lengths = np.asarray(lengths, dtype=offset_dtype)
    seq._offsets = np.cumsum(seq._lengths) - seq._lengths
    return seq


def _points(streamlines: Any) -> ArraySequence:
    """``streamlines`` as an ArraySequence of float32 (n_i, 3) arrays."""
    if not isinstance(streamlines, ArraySequence):
        streamlines = ArraySequence([np.asarray(s, dtype=np.float32) for s in streamlines])
    data, lengths = _flatten(streamlines)
    data = data.reshape(0, 3) if data.size == 0 else data
    if data.ndim != 2 or data.shape[1] != 3:
        raise ConfigError(f"streamline points must be (n, 3) arrays, got rows of shape {data.shape[1:]}")
    return _sequence(np.ascontiguousarray(data, dtype=np.float32), lengths)


def _transform(seq: ArraySequence, affine: np.ndarray) -> ArraySequence:
    """Apply a 4x4 ``affine`` to every point at once (float64 maths, float32 out)."""
    data, lengths = _flatten(seq)
    return _sequence(apply_affine(affine, data.astype(np.float64)).astype(np.float32), lengths)


def _to_voxels(seq: ArraySequence, affine: np.ndarray) -> ArraySequence:
    """RAS mm -> voxel coordinates exactly as DIPY's ``StatefulTractogram.to_vox`` computes them.

    DIPY (and so scilpy's Tractometer) applies the inverse affine in float32 in place;
    doing the same here gives the same bits, so a file scores the same in both.
    """
    data, lengths = _flatten(seq)
    data = np.array(data, dtype=np.float32)
    if data.size:
        apply_affine(np.linalg.inv(affine).astype(np.float32), data, inplace=True)
    return _sequence(data, lengths)


def _squeezed(values: np.ndarray) -> np.ndarray:
    """Drop a column axis of width 1."""
    return values[:, 0] if values.ndim == 2 and values.shape[1] == 1 else values


def _checked_grid(affine: Any, shape: Any) -> Grid:
    """Validate an affine and a shape; ConfigError when they cannot describe a grid."""
    affine = np.array(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ConfigError(f"the affine must be a finite 4x4 matrix, got shape {affine.shape}")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ConfigError("the affine is singular (a voxel has no volume)")
    dims = tuple(int(d) for d in tuple(shape)[:3])
    if len(dims) != 3 or min(dims) < 1:
        raise ConfigError(f"the grid needs 3 positive dimensions, got {tuple(shape)}")
    return affine, dims, tuple(float(v) for v in voxel_sizes(affine))


@dataclass
class Tractogram:
    """Streamlines in voxel space (integer coordinates are voxel centres) on a grid.

    Attributes
    ----------
    streamlines : ArraySequence
        float32 (n_i, 3) arrays of voxel coordinates (lists of arrays are converted).
    affine : ndarray (4, 4)
        Voxel -> RAS mm, float64.
    dimensions : tuple of 3 int
        Shape of the reference grid.
    voxel_sizes : tuple of 3 float, optional
        Voxel sizes in mm; derived from ``affine`` when not given.
    data_per_streamline : dict of str to ndarray
        One row per streamline.
    data_per_point : dict of str to ArraySequence
        One row per point.
    """

    streamlines: ArraySequence
    affine: np.ndarray
    dimensions: tuple[int, int, int]
    voxel_sizes: tuple[float, float, float] | None = None
    data_per_streamline: dict[str, np.ndarray] = field(default_factory=dict)
    data_per_point: dict[str, ArraySequence] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.affine, self.dimensions, sizes = _checked_grid(self.affine, self.dimensions)
        self.voxel_sizes = sizes if self.voxel_sizes is None else tuple(float(v) for v in self.voxel_sizes)
        self.streamlines = _points(self.streamlines)
        lengths = _flatten(self.streamlines)[1]
        self.data_per_streamline = {k: np.asarray(v) for k, v in self.data_per_streamline.items()}
        for key, values in self.data_per_streamline.items():
            if len(values) != len(lengths):
                raise ConfigError(f"data_per_streamline[{key!r}] has {len(values)} rows "
                                  f"for {len(lengths)} streamlines")
        per_point = {}
        for key, values in self.data_per_point.items():
            if not isinstance(values, ArraySequence):
                values = ArraySequence([np.asarray(v) for v in values])
            data, counts = _flatten(values)
            if not np.array_equal(counts, lengths):
                raise ConfigError(f"data_per_point[{key!r}] does not have one row per streamline point")
            per_point[key] = _sequence(data, counts)
        self.data_per_point = per_point

    def __len__(self) -> int:
        return len(self.streamlines)

    def to_rasmm(self) -> ArraySequence:
        """The streamlines in RAS mm (the affine applied to every point)."""
        return _transform(self.streamlines, self.affine)

    @classmethod
    def from_rasmm(cls, streamlines_rasmm: Any, reference: Any,
                   data_per_streamline: dict[str, np.ndarray] | None = None,
                   data_per_point: dict[str, ArraySequence] | None = None) -> Tractogram:
        """Build a Tractogram from RAS-mm streamlines on the grid of ``reference``."""
        affine, dims, sizes = reference_grid(reference)
        voxels = _to_voxels(_points(streamlines_rasmm), affine)
        return cls(voxels, affine, dims, sizes, dict(data_per_streamline or {}), dict(data_per_point or {}))

    def lengths_mm(self) -> np.ndarray:
        """Length of every streamline in mm (float64; 0 for fewer than two points)."""
        data, lengths = _flatten(self.streamlines)
        steps = np.linalg.norm(np.diff(apply_affine(self.affine, data.astype(np.float64)), axis=0), axis=1)
        owner = np.repeat(np.arange(len(lengths)), lengths)
        inside = owner[1:] == owner[:-1]  # drop the jumps from one streamline to the next
        return np.bincount(owner[1:][inside], weights=steps[inside], minlength=len(lengths))


def reference_grid(reference: Any) -> Grid:
    """The grid ``(affine, dimensions, voxel_sizes)`` of a reference.

    Parameters
    ----------
    reference : str, Path, nibabel image, DWI, Tractogram or (affine, shape)
        A NIfTI file, a loaded image or scan, a tractogram, or an explicit grid.
    """
    if isinstance(reference, Tractogram):
        return reference.affine.copy(), reference.dimensions, reference.voxel_sizes
    if isinstance(reference, tuple) and len(reference) == 2:
        return _checked_grid(*reference)
    if isinstance(reference, (str, Path)):
        path = Path(reference)
        if not path.is_file():
            raise InputError(path, "reference is not a file" if path.exists() else "reference image not found")
        try:
            image = nib.load(str(path))
            return _checked_grid(image.affine, image.shape)
        except Exception as exc:  # nibabel raises many types for bad headers
            raise InputError(path, f"cannot read reference image ({type(exc).__name__}: {exc})") from None
    if isinstance(reference, (SpatialImage, DWI)):
        return _checked_grid(reference.affine, reference.shape)
    raise ConfigError(f"cannot take a grid from a {type(reference).__name__}: give a NIfTI path, "
                      "an image, a DWI, a Tractogram or (affine, shape)")


# ----------------------------------------------------------------------------- writing
# Writers get the temporary path from atomic_file and write RAS mm.

def _write_trk(t: Tractogram, path: Path) -> None:
    dpp = {k: _flatten(v) for k, v in t.data_per_point.items()}
    dpp = {k: _sequence(data.reshape(len(data), -1), lengths) for k, (data, lengths) in dpp.items()}
    dps = {k: v.reshape(len(v), -1) for k, v in t.data_per_streamline.items()}
    tractogram = nib.streamlines.Tractogram(t.to_rasmm(), data_per_streamline=dps,
                                            data_per_point=dpp, affine_to_rasmm=np.eye(4))
    TrkFile(tractogram, header=trk_header(t.affine, t.dimensions, t.voxel_sizes)).save(str(path))


def trk_header(affine: np.ndarray, dimensions, voxel_sizes) -> dict:
    """The .trk header fields of a grid; nibabel turns RAS mm into TrackVis voxmm (corner origin) from them."""
    return {Field.VOXEL_TO_RASMM: np.asarray(affine).astype(np.float32),
            Field.VOXEL_SIZES: np.asarray(voxel_sizes, dtype=np.float32),
            Field.DIMENSIONS: np.asarray(dimensions, dtype=np.int16),
            Field.VOXEL_ORDER: "".join(aff2axcodes(affine))}


def _write_tck(t: Tractogram, path: Path) -> None:
    dropped = sorted(t.data_per_streamline) + sorted(t.data_per_point)
    if dropped:
        warnings.warn(f"{path.name}: .tck cannot store per-streamline or per-point data; "
                      f"dropped {dropped}", DifftractWarning, stacklevel=3)
    TckFile(nib.streamlines.Tractogram(t.to_rasmm(), affine_to_rasmm=np.eye(4))).save(str(path))


def _write_trx(t: Tractogram, path: Path) -> None:
    from trx import trx_file_memmap as tmm  # imported here: it pulls in dipy

    for key in [*t.data_per_streamline, *t.data_per_point]:
        if not key or any(c in key for c in "./\\"):  # trx reads dtype and width from file names
            raise ConfigError(f"{path.name}: .trx data names cannot contain '.', '/' or '\\': {key!r}")
    data, lengths = _flatten(t.to_rasmm())
    streamlines = _sequence(data, lengths, np.uint64 if len(data) >= 2**32 else np.uint32)
    # An in-memory TrxFile owns no temporary folder; trx's save() copies it into one and
    # removes that folder when it closes the copy.
    trx = tmm.TrxFile()
    trx.header = {"VOXEL_TO_RASMM": t.affine.tolist(), "DIMENSIONS": list(t.dimensions),
                  "NB_VERTICES": int(len(data)), "NB_STREAMLINES": int(len(lengths))}
    trx.streamlines = streamlines  # trx wants unsigned offsets
    trx.data_per_streamline = {k: np.ascontiguousarray(v) for k, v in t.data_per_streamline.items()}
    for key, values in t.data_per_point.items():
        trx.data_per_vertex[key] = _sequence(np.ascontiguousarray(_flatten(values)[0]), lengths)
    tmm.save(trx, str(path))


_WRITERS = {".trk": _write_trk, ".tck": _write_tck, ".trx": _write_trx}


def save_tractogram(tractogram: Tractogram, path: str | Path, force: bool = False,
                    sidecar: dict[str, Any] | None = None) -> Path:
    """Write ``tractogram`` in RAS mm as .trk, .tck or .trx, chosen by the extension.

    The file appears only once complete. An existing output or sidecar is refused, before
    anything is written, unless ``force``. ``.tck`` drops per-streamline and per-point
    data with a :class:`DifftractWarning`. ``sidecar`` is a provenance record written
    beside the output (see :mod:`difftract.io.sidecar`). Returns ``path``.
    """
    path = Path(path)
    fmt = path.suffix.lower()
    if fmt not in _WRITERS:
        raise ConfigError(f"{path}: unsupported tractogram format; use one of {', '.join(FORMATS)}")
    check_output(path, force)
    if sidecar is not None:
        check_output(sidecar_path(path), force)
    with atomic_file(path, force=force) as tmp:
        _WRITERS[fmt](tractogram, tmp)
    if sidecar is not None:
        write_sidecar(path, sidecar, force=force)
    return path


# ----------------------------------------------------------------------------- reading
# Readers return (streamlines in RAS mm, data_per_streamline, data_per_point, grid or None).

def _read_nibabel(path: Path, cls: type) -> tuple:
    header = cls.load(str(path), lazy_load=True).header  # nibabel overwrites the count on reading
    announced = int(str(header.get("count" if cls is TckFile else Field.NB_STREAMLINES, 0)).strip() or 0)
    tfile = cls.load(str(path), lazy_load=False)
    streamlines = _points(tfile.streamlines)
    if announced and announced != len(streamlines):
        raise InputError(path, f"file is truncated: header announces {announced} streamlines, "
                               f"found {len(streamlines)}")
    dps = {k: _squeezed(np.asarray(v)) for k, v in tfile.tractogram.data_per_streamline.items()}
    dpp = {k: _flatten(v) for k, v in tfile.tractogram.data_per_point.items()}
    dpp = {k: _sequence(_squeezed(np.asarray(data)), lengths) for k, (data, lengths) in dpp.items()}
    hdr = tfile.header
    grid = _checked_grid(hdr[Field.VOXEL_TO_RASMM], hdr[Field.DIMENSIONS]) if cls is TrkFile else None
    return streamlines, dps, dpp, grid


def _read_trx(path: Path) -> tuple:
    from trx import trx_file_memmap as tmm

    trx = tmm.load(str(path))
    try:  # copy everything out of the memory maps, then close them and any temp folder
        header = trx.header
        data, lengths = _flatten(trx.streamlines)
        data = np.array(data, dtype=np.float32).reshape(-1, 3)
        lengths = np.array(lengths, dtype=np.int64)[: int(header["NB_STREAMLINES"])]
        if len(lengths) != header["NB_STREAMLINES"] or lengths.sum() != len(data):
            raise InputError(path, "streamline offsets do not match the number of points")
        dps = {k: _squeezed(np.array(v)) for k, v in trx.data_per_streamline.items()}
        dpp = {k: _sequence(_squeezed(np.array(_flatten(v)[0])), lengths)
               for k, v in trx.data_per_vertex.items()}
        grid = _checked_grid(header["VOXEL_TO_RASMM"], header["DIMENSIONS"])
    finally:
        trx.close()
    return _sequence(data, lengths), dps, dpp, grid


_READERS = {".trk": lambda p: _read_nibabel(p, TrkFile),
            ".tck": lambda p: _read_nibabel(p, TckFile),
            ".trx": _read_trx}


def read_rasmm(path: str | Path):
    """The streamlines of a .trk, .tck or .trx file in RAS mm as stored, with its per-streamline and
    per-point data and its own grid (None for .tck); every failure is an :class:`InputError` naming it."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "tractogram file not found")
    if not path.is_file():
        raise InputError(path, "expected a tractogram file, found a directory")
    fmt = path.suffix.lower()
    if fmt not in _READERS:
        raise InputError(path, f"unsupported tractogram format {path.suffix!r}; use one of {', '.join(FORMATS)}")
    try:
        return _READERS[fmt](path)
    except InputError:
        raise
    except DifftractError as exc:  # e.g. a singular affine in the header
        raise InputError(path, f"invalid {fmt} file ({exc})") from None
    except PermissionError as exc:
        hint = "; trx-python memory-maps .trx files read-write" if fmt == ".trx" else ""
        raise InputError(path, f"cannot open {fmt} file ({exc}){hint}") from None
    except Exception as exc:  # nibabel, trx and zipfile raise many types for bad files
        raise InputError(path, f"cannot read {fmt} file, it is truncated or corrupt "
                               f"({type(exc).__name__}: {exc})") from None


def load_tractogram(path: str | Path, reference: Any = None) -> Tractogram:
    """Read a .trk, .tck or .trx file into voxel space.

    Parameters
    ----------
    path : str or Path
        The tractogram file.
    reference : str, Path, image, Tractogram or (affine, shape), optional
        The grid. Required for ``.tck``; for ``.trk`` and ``.trx`` it must match the
        file's own grid (affine to 1e-4, same dimensions).
    """
    path = Path(path)
    grid = None if reference is None else reference_grid(reference)
    if path.suffix.lower() == ".tck" and grid is None and path.is_file():
        raise InputError(path, "a .tck file has no grid: give a reference image")
    streamlines, dps, dpp, file_grid = read_rasmm(path)
    if grid is not None and file_grid is not None:
        if file_grid[1] != grid[1] or not np.allclose(file_grid[0], grid[0], rtol=0, atol=1e-4):
            raise InputError(path, f"grid does not match the reference: file has dimensions {file_grid[1]} "
                                   f"and affine {file_grid[0].tolist()}, reference has {grid[1]} and "
                                   f"{grid[0].tolist()}")
    affine, dims, _ = grid if grid is not None else file_grid  # the reference's float64 is exact
    return Tractogram.from_rasmm(streamlines, (affine, dims), dps, dpp)
