"""Structural connectome of a tractogram and a parcellation, with MRtrix ``tck2connectome``'s semantics.

Each streamline's two end points are assigned to nodes of an integer label volume (node ``k``
is label ``k``; 0 is "unassigned"), and the streamline adds its contribution (1, its length or
1/length) to the symmetric matrix at its node pair: ``C[i, j]`` and ``C[j, i]`` for ``i != j``,
``C[i, i]`` once for both ends in ``i``. Streamlines with an unassigned end are left out (or kept
in row/column 0). The pair -> matrix step is the hard-assignment path of
:func:`difftract.learn.connectome.connectome` (one-hot assignments).

Assignment, as MRtrix 3.0 does it (``src/dwi/tractography/connectome/tck2nodes.cpp``), in the
parcellation's voxel space computed in float64 from the RAS-mm points of the file:

- ``end``: the voxel containing the end point, the voxel index being ``std::round`` of the
  continuous index (voxel centres are integers; halves round away from zero, so -0.5 is outside
  and 2.5 is voxel 3). Off the grid: unassigned. (``-assignment_end_voxels``)
- ``radial`` (MRtrix's default, radius 4 mm): the labelled voxel whose centre is nearest (in mm)
  to the end point, strictly closer than the radius; none: unassigned. Equal distances go to
  the first voxel in MRtrix's search order (offsets from the end's voxel sorted by their length,
  then by z, y, x). (``-assignment_radial_search R``)

Lengths (``--scale length|invlength``) are polyline lengths in mm of the points as stored in the
file (float64 sums). A streamline of one point has length 0 and contributes 0 under
``invlength``, as in MRtrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, InputError

ASSIGNMENTS = ("end", "radial")
SCALES = ("count", "length", "invlength")
DEFAULT_RADIUS_MM = 4.0


# ----------------------------------------------------------------------------- inputs
@dataclass
class Parcellation:
    """An integer label volume on a grid; node ``k`` is label ``k`` (1..max), 0 is background."""

    labels: np.ndarray                  # (X, Y, Z) int64
    affine: np.ndarray                  # voxel -> RAS mm, float64
    names: dict[int, str] = field(default_factory=dict)
    path: Path | None = None

    @property
    def n_nodes(self) -> int:
        return int(self.labels.max()) if self.labels.size else 0

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.labels.shape)

    def node_names(self) -> list[str]:
        """Names of nodes 1..n_nodes: the lookup table's, else the label number."""
        return [self.names.get(k, str(k)) for k in range(1, self.n_nodes + 1)]


def check_labels(data: np.ndarray, where: str | Path | None = None) -> np.ndarray:
    """``data`` as an int64 3D label volume; refuses non-integer, negative or non-finite values."""
    data = np.asarray(data)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(where, f"a parcellation must be a 3D label volume, got shape {data.shape}")
    if data.dtype.kind == "b":
        data = data.astype(np.uint8)
    if data.dtype.kind not in "iuf":
        raise InputError(where, f"parcellation labels must be integers, got {data.dtype}")
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)):
            raise InputError(where, "parcellation holds NaN or infinite values; labels must be integers")
        fractional = data != np.round(data)
        if fractional.any():
            value = float(data[fractional][0])
            raise InputError(where, f"parcellation labels must be integers, found {int(fractional.sum())} "
                                    f"voxel(s) with fractional values (e.g. {value:g}); is this an "
                                    "interpolated image? Resample parcellations with nearest-neighbour")
    if data.size and data.min() < 0:
        raise InputError(where, f"parcellation labels must be >= 0 (0 is background), found {data.min():g}")
    labels = data.astype(np.int64)
    if not labels.any():
        raise InputError(where, "the parcellation has no labels other than 0")
    return labels


def read_lut(path: str | Path) -> dict[int, str]:
    """A lookup table: lines ``INDEX NAME [R G B A]`` (FreeSurfer's colour table and MRtrix's formats).

    Blank lines and ``#`` comments are skipped; a line whose first field is not an integer is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "lookup table not found" if not path.exists() else "lookup table is not a file")
    names: dict[int, str] = {}
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        try:
            index = int(fields[0])
        except ValueError:
            raise InputError(path, f"line {number}: expected 'INDEX NAME ...', got {line[:60]!r}") from None
        if len(fields) < 2:
            raise InputError(path, f"line {number}: label {index} has no name")
        names[index] = fields[1]
    if not names:
        raise InputError(path, "lookup table has no entries")
    return names


def load_parcellation(path: str | Path, lut: str | Path | None = None) -> Parcellation:
    """Read a label NIfTI (and an optional lookup table) into a :class:`Parcellation`."""
    from ..io.nifti import load_nifti

    path = Path(path)
    image = load_nifti(path, "parcellation")
    labels = check_labels(np.asanyarray(image.dataobj), path)
    names = read_lut(lut) if lut is not None else {}
    return Parcellation(labels, np.asarray(image.affine, dtype=np.float64), names, path)


def read_streamlines_rasmm(path: str | Path):
    """The streamlines of a .tck/.trk/.trx file in RAS mm exactly as stored (float32), and the file's grid.

    Assignment works on these points rather than on voxel coordinates computed in float32, so an
    end point lying on a voxel boundary is assigned as MRtrix assigns it.
    """
    from ..io.tractogram import read_rasmm

    streamlines, _, _, grid = read_rasmm(path)
    return streamlines, grid


def check_grid(grid, parcellation: Parcellation, path: str | Path) -> None:
    """Refuse a tractogram whose own grid (.trk/.trx) is not the parcellation's."""
    if grid is None:
        return
    affine, dims = grid[0], tuple(grid[1])
    if dims != parcellation.shape or not np.allclose(affine, parcellation.affine, rtol=0, atol=1e-4):
        raise InputError(path, f"is on grid {dims} but the parcellation {parcellation.path} is on "
                               f"{parcellation.shape} (or their affines differ); resample the parcellation "
                               "(nearest neighbour) to the tractogram's grid, or pass --any-grid to assign "
                               "in RAS mm as MRtrix does")


# ----------------------------------------------------------------------------- assignment
def endpoints(streamlines) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First and last points ``(S, 3)`` float64 of each streamline (an ArraySequence), and a mask of non-empty ones."""
    from ..io.tractogram import _flatten

    data, lengths = _flatten(streamlines)
    data = np.asarray(data, dtype=np.float64).reshape(-1, 3)
    lengths = np.asarray(lengths, dtype=np.int64)
    nonempty = lengths > 0
    starts = np.cumsum(lengths) - lengths
    first = np.zeros((len(lengths), 3))
    last = np.zeros((len(lengths), 3))
    first[nonempty] = data[starts[nonempty]]
    last[nonempty] = data[starts[nonempty] + lengths[nonempty] - 1]
    return first, last, nonempty


def polyline_lengths(streamlines) -> np.ndarray:
    """Length in mm of every streamline (RAS mm points), float64; 0 for fewer than two points."""
    from ..io.tractogram import _flatten

    data, lengths = _flatten(streamlines)
    data = np.asarray(data, dtype=np.float64).reshape(-1, 3)
    lengths = np.asarray(lengths, dtype=np.int64)
    if not len(data):
        return np.zeros(len(lengths))
    steps = np.linalg.norm(np.diff(data, axis=0), axis=1)
    owner = np.repeat(np.arange(len(lengths)), lengths)
    inside = owner[1:] == owner[:-1]
    return np.bincount(owner[1:][inside], weights=steps[inside], minlength=len(lengths))


def std_round(x: np.ndarray) -> np.ndarray:
    """C's ``std::round``: halves away from zero (numpy's ``round`` takes halves to even)."""
    x = np.asarray(x, dtype=np.float64)
    return (np.sign(x) * np.floor(np.abs(x) + 0.5)).astype(np.int64)


def to_voxels(points_mm: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Continuous voxel indices (float64) of RAS-mm points (MRtrix's ``scanner2voxel`` in double)."""
    inverse = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    return np.asarray(points_mm, dtype=np.float64) @ inverse[:3, :3].T + inverse[:3, 3]


def _lookup(labels: np.ndarray, voxels: np.ndarray) -> np.ndarray:
    """Labels at integer voxels ``(..., 3)``; 0 off the grid."""
    shape = np.array(labels.shape)
    inside = np.all((voxels >= 0) & (voxels < shape), axis=-1)
    out = np.zeros(voxels.shape[:-1], dtype=np.int64)
    v = voxels[inside]
    out[inside] = labels[v[:, 0], v[:, 1], v[:, 2]]
    return out


def assign_end_voxels(points_mm: np.ndarray, parcellation: Parcellation) -> np.ndarray:
    """Node of the voxel containing each point (``-assignment_end_voxels``); 0 off the grid or unlabelled."""
    return _lookup(parcellation.labels, std_round(to_voxels(points_mm, parcellation.affine)))


def radial_offsets(voxel_sizes, radius_mm: float) -> np.ndarray:
    """Voxel offsets ``(K, 3)`` searched by MRtrix's radial search, in its order.

    Offsets shorter (in mm) than ``radius + half the voxel diagonal``, sorted by that length;
    equal lengths keep the loop order (z outermost, x innermost, each from negative to positive),
    as ``std::multimap`` does.
    """
    sizes = np.asarray(voxel_sizes, dtype=np.float64)
    extra = math.sqrt(float(np.sum((0.5 * sizes) ** 2)))
    reach = int(math.ceil((radius_mm + extra) / float(sizes.min())))
    r = np.arange(-reach, reach + 1)
    z, y, x = np.meshgrid(r, r, r, indexing="ij")           # z outermost, x innermost
    offsets = np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1)
    dist = np.sqrt((offsets[:, 2] * sizes[2]) ** 2 + (offsets[:, 1] * sizes[1]) ** 2
                   + (offsets[:, 0] * sizes[0]) ** 2)
    keep = dist < radius_mm + extra
    order = np.argsort(dist[keep], kind="stable")
    return offsets[keep][order]


def assign_radial(points_mm: np.ndarray, parcellation: Parcellation, radius_mm: float = DEFAULT_RADIUS_MM,
                  chunk: int = 4096) -> np.ndarray:
    """Node of the nearest labelled voxel centre within ``radius_mm`` (``-assignment_radial_search``)."""
    if not radius_mm > 0:
        raise ConfigError(f"the radial search radius must be positive, got {radius_mm}")
    affine = parcellation.affine
    sizes = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    offsets = radial_offsets(sizes, radius_mm)
    points_mm = np.asarray(points_mm, dtype=np.float64).reshape(-1, 3)
    centres = std_round(to_voxels(points_mm, affine))
    out = np.zeros(len(points_mm), dtype=np.int64)
    for lo in range(0, len(points_mm), chunk):
        voxels = centres[lo:lo + chunk, None, :] + offsets[None]            # (n, K, 3)
        mm = voxels @ affine[:3, :3].T + affine[:3, 3]                      # voxel2scanner
        dist = np.linalg.norm(points_mm[lo:lo + chunk, None, :] - mm, axis=-1)
        nodes = _lookup(parcellation.labels, voxels)
        dist = np.where((nodes > 0) & (dist < radius_mm), dist, np.inf)
        best = np.argmin(dist, axis=1)                                      # first minimum: search order
        rows = np.arange(len(best))
        found = np.isfinite(dist[rows, best])
        out[lo:lo + chunk] = np.where(found, nodes[rows, best], 0)
    return out


def assign(points_mm: np.ndarray, parcellation: Parcellation, assignment: str = "radial",
           radius_mm: float = DEFAULT_RADIUS_MM) -> np.ndarray:
    """Node of every point ``(N, 3)`` (RAS mm) by ``assignment`` (``end`` or ``radial``)."""
    if assignment == "end":
        return assign_end_voxels(points_mm, parcellation)
    if assignment == "radial":
        return assign_radial(points_mm, parcellation, radius_mm)
    raise ConfigError(f"unknown assignment {assignment!r}; use one of {', '.join(ASSIGNMENTS)}")


# ----------------------------------------------------------------------------- matrix
def pair_matrix(pairs: np.ndarray, n_nodes: int, values: np.ndarray | None = None,
                chunk: int = 65536) -> np.ndarray:
    """Symmetric ``(n_nodes + 1, n_nodes + 1)`` matrix (row/column 0: unassigned) of node pairs ``(S, 2)``.

    Each pair adds its value (default 1) to ``C[i, j]`` and ``C[j, i]``, or once to ``C[i, i]``:
    the hard-assignment path of :func:`difftract.learn.connectome.connectome` on one-hot ends.
    """
    from ..learn.connectome import connectome

    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    values = np.ones(len(pairs)) if values is None else np.asarray(values, dtype=np.float64)
    size = n_nodes + 1
    total = torch.zeros((size, size), dtype=torch.float64)
    eye = torch.eye(size, dtype=torch.float64)
    for lo in range(0, len(pairs), chunk):
        p = torch.from_numpy(pairs[lo:lo + chunk])
        total += connectome(eye[p[:, 0]], eye[p[:, 1]], torch.from_numpy(values[lo:lo + chunk]))
    return total.numpy()


@dataclass
class Connectome:
    """A connectome and how it was made."""

    matrix: np.ndarray                  # (n, n) symmetric, nodes 1..n (or 0..n with keep_unassigned)
    node_labels: list[int]
    node_names: list[str]
    assignments: np.ndarray             # (S, 2) node of each streamline's first and last point
    values: np.ndarray                  # (S,) each streamline's contribution
    params: dict

    @property
    def n_streamlines(self) -> int:
        return len(self.assignments)

    def summary(self) -> dict:
        a = self.assignments
        both = (a > 0).all(axis=1)
        nodes = self.node_labels
        off = ~np.eye(len(nodes), dtype=bool)
        return {"streamlines": int(len(a)), "assigned": int(both.sum()),
                "one_end_unassigned": int(((a > 0).sum(axis=1) == 1).sum()),
                "both_ends_unassigned": int((a == 0).all(axis=1).sum()),
                "self_connections": int((both & (a[:, 0] == a[:, 1])).sum()),
                "nodes": len([n for n in nodes if n > 0]),
                "edges": int((np.triu(self.matrix, 1) != 0).sum()),
                "matrix_sum": float(self.matrix.sum()),
                "upper_sum": float(np.triu(self.matrix).sum()),
                "offdiag_sum": float(self.matrix[off].sum())}


def build_connectome(streamlines_mm, parcellation: Parcellation, assignment: str = "radial",
                     radius_mm: float = DEFAULT_RADIUS_MM, scale: str = "count",
                     keep_unassigned: bool = False, zero_diagonal: bool = False) -> Connectome:
    """The connectome of streamlines in RAS mm (an ArraySequence or a list of ``(n_i, 3)`` arrays).

    Parameters
    ----------
    assignment : ``radial`` (MRtrix's default) or ``end``
    radius_mm : float
        Radial search radius (MRtrix's default 4 mm).
    scale : ``count``, ``length`` (each streamline adds its length in mm) or ``invlength``
    keep_unassigned : bool
        Keep node 0 (unassigned ends) as the first row and column, as ``-keep_unassigned``.
    zero_diagonal : bool
        Zero the diagonal, as ``-zero_diagonal``.
    """
    from ..io.tractogram import _points

    if scale not in SCALES:
        raise ConfigError(f"unknown scale {scale!r}; use one of {', '.join(SCALES)}")
    streamlines_mm = _points(streamlines_mm)
    first, last, nonempty = endpoints(streamlines_mm)
    ends = assign(np.concatenate([first, last]), parcellation, assignment, radius_mm)
    pairs = np.stack([ends[:len(first)], ends[len(first):]], axis=1)
    pairs[~nonempty] = 0
    if scale == "count":
        values = np.ones(len(pairs))
    else:
        lengths = polyline_lengths(streamlines_mm)
        if scale == "length":
            values = lengths
        else:
            with np.errstate(divide="ignore"):
                values = np.where(lengths > 0, 1.0 / np.where(lengths > 0, lengths, 1.0), 0.0)
    n = parcellation.n_nodes
    full = pair_matrix(pairs, n, values)
    if zero_diagonal:
        np.fill_diagonal(full, 0.0)
    labels = list(range(0 if keep_unassigned else 1, n + 1))
    names = (["unassigned"] if keep_unassigned else []) + parcellation.node_names()
    matrix = full if keep_unassigned else full[1:, 1:]
    params = {"assignment": assignment, "radius_mm": radius_mm if assignment == "radial" else None,
              "scale": scale, "keep_unassigned": keep_unassigned, "zero_diagonal": zero_diagonal,
              "symmetric": True, "stat_edge": "sum"}
    return Connectome(matrix, labels, names, pairs, values, params)


# ----------------------------------------------------------------------------- files
def format_csv(conn: Connectome, delimiter: str = ",") -> str:
    """The matrix as CSV: a header row of node names, then one row per node (full float precision)."""
    def cell(v: float) -> str:
        return format(float(v), ".17g") if v != int(v) or abs(v) >= 2 ** 53 else str(int(v))

    lines = [delimiter.join(_csv_field(n) for n in conn.node_names)]
    lines += [delimiter.join(cell(v) for v in row) for row in conn.matrix]
    return "\n".join(lines) + "\n"


def _csv_field(name: str) -> str:
    return f'"{name}"' if any(c in name for c in ',"\n') else name


def read_matrix(path: str | Path) -> np.ndarray:
    """A square matrix written by MRtrix (space, tab or comma separated) or by :func:`format_csv` (header skipped)."""
    rows = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.replace(",", " ").split()
        try:
            rows.append([float(f) for f in fields])
        except ValueError:
            if rows:
                raise InputError(path, f"non-numeric row in the matrix: {line[:60]!r}") from None
            continue                              # a header of node names
    if len(rows) > 1 and len(rows) == len(rows[0]) + 1:
        rows = rows[1:]                           # a header of node numbers above a square matrix
    return np.array(rows, dtype=np.float64)
