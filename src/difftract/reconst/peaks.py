"""Peak directions of SH fields (fODFs, ODFs) and of tensors, batched in torch.

:func:`peaks_from_sh` gives the peaks DIPY's ``peaks_from_model(model, data, sphere,
relative_peak_threshold, min_separation_angle, mask=mask, npeaks=npeaks,
normalize_peaks=False)`` gives for an SH model, for a whole chunk of voxels at once.
Per voxel, with the ODF sampled on the sphere's vertices (``coeffs @ B.T``, no clipping):

1. local maxima (DIPY's ``local_maxima``): vertices >= every neighbour along the
   sphere's edges and > at least one (a flat ODF has none); sorted by value, equal
   values by vertex index;
2. one maximum is kept as it is; with several, those with ``value - m >= rel *
   (largest - m)`` are kept, ``m = max(0, min(odf))``;
3. in that order, a peak is dropped when it is within ``min_separation_angle`` of an
   already kept peak or of its antipode (``remove_similar_vertices``);
4. the first ``npeaks`` remain.

Differences: DIPY's ``gfa_thr`` (default 0) skips no voxel and is not reproduced, nor
are its GFA/QA maps; DIPY raises on an ODF with a NaN, here such a voxel has no peaks.
Amplitudes equal up to rounding (a flat fODF of a noise-free isotropic voxel; v and -v on
a full sphere) may order differently than in DIPY, whose BLAS sums round differently.
:func:`peaks_from_evecs` turns a tensor fit into a one-peak field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from dipy.core.sphere import Sphere

from ..device import resolve_device, resolve_dtype
from ..errors import ConfigError
from ..memory import chunk_for
from .sh import SHFit, lmax_from_ncoeffs, sh_basis
from .voxels import map_chunks, masked_rows, unmask

PEAKS_CHUNK_CPU = 2_048     # voxels per chunk: the (362, V) amplitudes stay in the CPU caches (measured)
PEAKS_CHUNK_CUDA = 20_000


def default_sphere() -> Sphere:
    """DIPY's ``default_sphere``: the 362 vertices of the repulsion724 hemisphere."""
    from dipy.data import default_sphere as sphere
    return sphere


@dataclass
class Peaks:
    """Up to ``npeaks`` directions per voxel, largest first.

    ``dirs`` are unit vectors (zeros where there is no peak), ``values`` the ODF
    amplitudes there (0 where none), ``indices`` the sphere vertices (-1 where none, and
    everywhere for peaks that do not come from a sphere).
    """

    dirs: np.ndarray        # (X, Y, Z, npeaks, 3)
    values: np.ndarray      # (X, Y, Z, npeaks)
    indices: np.ndarray     # (X, Y, Z, npeaks) int
    params: dict = field(default_factory=dict)

    @property
    def npeaks(self) -> int:
        return self.values.shape[-1]

    @property
    def count(self) -> np.ndarray:
        """Number of peaks of each voxel, ``(X, Y, Z)``."""
        return (np.abs(self.dirs).sum(axis=-1) > 0).sum(axis=-1)

    def to_volume(self, scaled: bool = True) -> np.ndarray:
        """MRtrix-style ``(X, Y, Z, 3 * npeaks)`` float32 volume, absent peaks zero.

        ``scaled`` (MRtrix's convention) multiplies each direction by its amplitude;
        False writes unit vectors (the layout of the phantom's ``gt/peaks``).
        """
        vectors = self.dirs * self.values[..., None] if scaled else self.dirs
        return vectors.reshape(*self.dirs.shape[:-2], -1).astype(np.float32)

    @classmethod
    def from_volume(cls, volume: np.ndarray) -> Peaks:
        """Read a ``(X, Y, Z, 3 * npeaks)`` volume: values are the vector lengths (1 for
        unit vectors), directions the unit vectors; zero or NaN vectors are absent."""
        volume = np.asarray(volume, dtype=np.float64)
        if volume.ndim != 4 or volume.shape[-1] % 3:
            raise ConfigError(f"a peaks volume must be (X, Y, Z, 3 * npeaks), got shape {volume.shape}")
        vectors = np.nan_to_num(volume.reshape(*volume.shape[:3], -1, 3), nan=0.0)
        values = np.linalg.norm(vectors, axis=-1)
        present = values > 0
        dirs = np.where(present[..., None], vectors / np.where(present, values, 1.0)[..., None], 0.0)
        return cls(dirs, values, np.full(values.shape, -1, dtype=np.int64), {"source": "volume"})


def sphere_neighbours(edges: np.ndarray, n: int) -> np.ndarray:
    """``(n, d)`` neighbour table from an edge list, short rows padded with the vertex itself."""
    edges = np.asarray(edges, dtype=np.int64)
    if edges.size and edges.max() >= n:
        raise ConfigError("the sphere's edges refer to vertices it does not have")
    pairs = np.concatenate([edges, edges[:, ::-1]])
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    degree = np.bincount(pairs[:, 0], minlength=n)
    table = np.repeat(np.arange(n)[:, None], max(int(degree.max(initial=0)), 1), axis=1)
    start = np.r_[0, np.cumsum(degree)[:-1]]
    slot = np.arange(len(pairs)) - start[pairs[:, 0]]
    table[pairs[:, 0], slot] = pairs[:, 1]
    return table


def close_pairs(vertices: np.ndarray, angle: float) -> np.ndarray:
    """``(n, n)`` bool: vertex pairs within ``angle`` degrees, antipodes included
    (same arithmetic as DIPY's ``remove_similar_vertices``)."""
    v = np.asarray(vertices, dtype=np.float64)
    dots = v[:, None, 0] * v[None, :, 0] + v[:, None, 1] * v[None, :, 1] + v[:, None, 2] * v[None, :, 2]
    return np.abs(dots) > math.cos(math.pi / 180 * angle)


def find_peaks(odf: torch.Tensor, neighbours: torch.Tensor, close: torch.Tensor, relative_peak_threshold: float,
               npeaks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Peaks of ``odf (V, n)`` sampled on a sphere: ``(indices (V, npeaks), values (V, npeaks))``.

    ``neighbours`` is the sphere's ``(n, d)`` neighbour table and ``close`` its ``(n, n)``
    too-close-pairs matrix. Absent peaks have index -1 and value 0.
    """
    return find_peaks_by_vertex(odf.T.contiguous(), neighbours, close, relative_peak_threshold, npeaks)


def find_peaks_by_vertex(by_vertex: torch.Tensor, neighbours: torch.Tensor, close: torch.Tensor,
                         relative_peak_threshold: float, npeaks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`find_peaks` of the amplitudes given vertex by vertex, ``(n, V)`` (the neighbour
    comparisons then read whole rows)."""
    n, V = by_vertex.shape
    lowest = by_vertex.amin(dim=0)
    # a NaN or an infinity anywhere makes the range non-finite (two reductions, cheaper than isfinite)
    finite = torch.isfinite(by_vertex.amax(dim=0) - lowest)
    if not bool(finite.all()):
        by_vertex = torch.where(finite, by_vertex, torch.zeros_like(by_vertex))
        lowest = torch.where(finite, lowest, torch.zeros_like(lowest))
    is_max = local_maxima_by_vertex(by_vertex, neighbours) & finite
    out_idx = torch.full((V, npeaks), -1, dtype=torch.long, device=by_vertex.device)
    out_val = torch.zeros((V, npeaks), dtype=by_vertex.dtype, device=by_vertex.device)

    # the maxima (a few per voxel) sorted by voxel, then by value, equal values by vertex index
    # (DIPY's stable insertion sort): nonzero lists them by vertex, and both sorts are stable
    vertex, voxel = is_max.nonzero(as_tuple=True)
    if vertex.numel() == 0:
        return out_idx, out_val
    value = by_vertex[vertex, voxel]
    order = value.sort(descending=True, stable=True).indices
    order = order[voxel[order].sort(stable=True).indices]
    vertex, voxel, value = vertex[order], voxel[order], value[order]
    count = torch.bincount(voxel, minlength=V)
    rank = torch.arange(len(voxel), device=voxel.device) - (count.cumsum(0) - count)[voxel]
    K = int(count.max())
    cand = torch.zeros((V, K), dtype=torch.long, device=voxel.device)
    cand_val = torch.zeros((V, K), dtype=by_vertex.dtype, device=voxel.device)
    cand[voxel, rank], cand_val[voxel, rank] = vertex, value
    valid = torch.arange(K, device=voxel.device) < count[:, None]

    # relative threshold above max(0, min odf); a lone maximum is kept unless negative (DIPY drops it)
    floor = lowest.clamp(min=0)[:, None]
    shifted = cand_val - floor
    valid &= (shifted >= relative_peak_threshold * shifted[:, :1]) | ((count[:, None] == 1) & (cand_val >= 0))

    # greedy removal of maxima too close to a kept one (or to its antipode); valid is a prefix
    keep = torch.zeros_like(valid)
    keep[:, 0] = valid[:, 0]
    flat_close = close.reshape(-1)
    for k in range(1, int(valid.sum(dim=1).max())):
        near = flat_close[cand[:, k, None] * n + cand[:, :k]]          # (V, k)
        keep[:, k] = valid[:, k] & ~(near & keep[:, :k]).any(dim=1)
    rank = keep.cumsum(dim=1) - 1
    take = keep & (rank < npeaks)
    rows = torch.arange(V, device=voxel.device)[:, None].expand(V, K)[take]
    out_idx[rows, rank[take]] = cand[take]
    out_val[rows, rank[take]] = cand_val[take]
    return out_idx, out_val


def local_maxima(odf: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
    """``(V, n)`` bool: >= every neighbour and > at least one (DIPY's ``local_maxima``)."""
    return local_maxima_by_vertex(odf.T.contiguous(), neighbours).T


def local_maxima_by_vertex(by_vertex: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
    """:func:`local_maxima` of amplitudes given vertex by vertex, ``(n, V) -> (n, V)``."""
    nbr_max = by_vertex[neighbours[:, 0]]                              # row gathers are cheap
    nbr_min = nbr_max.clone()
    for d in range(1, neighbours.shape[1]):
        values = by_vertex[neighbours[:, d]]
        torch.maximum(nbr_max, values, out=nbr_max)
        torch.minimum(nbr_min, values, out=nbr_min)
    return (by_vertex >= nbr_max) & (by_vertex > nbr_min)


def check_peak_options(relative_peak_threshold: float, min_separation_angle: float, npeaks: int) -> None:
    """Refuse peak-extraction options out of range (before any expensive fit)."""
    if not 0.0 <= relative_peak_threshold <= 1.0:
        raise ConfigError(f"relative_peak_threshold must be in [0, 1], got {relative_peak_threshold}")
    if not 0.0 <= min_separation_angle <= 90.0:
        raise ConfigError(f"min_separation_angle must be in [0, 90] degrees, got {min_separation_angle}")
    if not (isinstance(npeaks, (int, np.integer)) and npeaks >= 1):
        raise ConfigError(f"npeaks must be a positive integer, got {npeaks!r}")


def peaks_from_sh(sh: SHFit | np.ndarray, mask: np.ndarray | None = None, *, legacy: bool | None = None,
                  sphere: Sphere | None = None, relative_peak_threshold: float = 0.5,
                  min_separation_angle: float = 25.0, npeaks: int = 3, device: str | torch.device = "cpu",
                  dtype: str | torch.dtype = "float64", chunk_size: int | None = None,
                  progress: bool | None = None) -> Peaks:
    """Peaks of an SH field on ``sphere`` (DIPY's ``default_sphere`` when None).

    Parameters
    ----------
    sh : SHFit or ndarray (X, Y, Z, n_coeffs)
        The field; with an array, ``legacy`` must say its basis (lmax follows from the
        coefficient count).
    mask : ndarray of bool or None
        Voxels to search; default the fit's mask (or every voxel).
    relative_peak_threshold, min_separation_angle, npeaks
        As in DIPY's ``peaks_from_model``.
    """
    if isinstance(sh, SHFit):
        coeffs, legacy = sh.coeffs, sh.legacy if legacy is None else legacy
        mask = sh.mask if mask is None else mask
    else:
        coeffs = np.asarray(sh)
        if legacy is None:
            raise ConfigError("peaks_from_sh needs legacy=True/False to know the basis of a coefficient array")
    if coeffs.ndim != 4:
        raise ConfigError(f"SH coefficients must be (X, Y, Z, n_coeffs), got shape {coeffs.shape}")
    try:
        lmax = lmax_from_ncoeffs(coeffs.shape[-1])
    except ValueError as err:
        raise ConfigError(str(err)) from None
    check_peak_options(relative_peak_threshold, min_separation_angle, npeaks)
    sphere = default_sphere() if sphere is None else sphere
    vertices = np.asarray(sphere.vertices, dtype=np.float64)
    B, _ = sh_basis(vertices, lmax, bool(legacy))

    rows, mask = masked_rows(coeffs, mask)
    device, dtype = resolve_device(device), resolve_dtype(dtype)
    basis = torch.as_tensor(B, device=device, dtype=dtype)          # (n, C): amplitudes come out vertex by vertex
    neighbours = torch.as_tensor(sphere_neighbours(sphere.edges, len(vertices)), device=device)
    close = torch.as_tensor(close_pairs(vertices, min_separation_angle), device=device)
    vert = torch.as_tensor(vertices, device=device, dtype=dtype)

    def kernel(chunk: torch.Tensor) -> dict[str, torch.Tensor]:
        idx, val = find_peaks_by_vertex(basis @ chunk.T, neighbours, close, relative_peak_threshold, int(npeaks))
        dirs = vert[idx.clamp(min=0)] * (idx >= 0).unsqueeze(-1)
        return {"indices": idx, "values": val, "dirs": dirs}

    # per voxel: its amplitudes on the sphere and the neighbour comparisons of the search
    default = PEAKS_CHUNK_CUDA if device.type == "cuda" else PEAKS_CHUNK_CPU
    chunk_size = chunk_size or chunk_for(64 * len(vertices), device, default, minimum=256)
    out = map_chunks(kernel, rows, device=device, dtype=dtype, chunk_size=chunk_size, progress=progress,
                     desc="peaks")
    params = {"source": "sh", "lmax": lmax, "legacy": bool(legacy), "sphere_vertices": int(len(vertices)),
              "relative_peak_threshold": float(relative_peak_threshold),
              "min_separation_angle": float(min_separation_angle), "npeaks": int(npeaks),
              "values": "ODF amplitude at the peak (not normalised)"}
    return Peaks(unmask(out["dirs"], mask), unmask(out["values"], mask), unmask(out["indices"], mask, fill=-1),
                 params)


def peaks_from_evecs(evecs: np.ndarray, fa: np.ndarray, mask: np.ndarray | None = None,
                     fa_threshold: float = 0.0) -> Peaks:
    """The principal eigenvector as a one-peak field, valued by FA.

    ``evecs (X, Y, Z, 3, 3)`` has eigenvectors in columns sorted by decreasing eigenvalue
    (DIPY's convention). Voxels outside ``mask`` or with ``fa <= fa_threshold`` (or a
    non-finite FA) have no peak.
    """
    evecs, fa = np.asarray(evecs, dtype=np.float64), np.asarray(fa, dtype=np.float64)
    if evecs.shape[-2:] != (3, 3) or evecs.shape[:-2] != fa.shape:
        raise ConfigError(f"evecs must be (X, Y, Z, 3, 3) and fa (X, Y, Z); got {evecs.shape} and {fa.shape}")
    keep = np.isfinite(fa) & (fa > fa_threshold)
    if mask is not None:
        keep &= np.asarray(mask, dtype=bool)
    principal = evecs[..., :, 0]
    norm = np.linalg.norm(principal, axis=-1, keepdims=True)
    keep &= np.isfinite(norm[..., 0]) & (norm[..., 0] > 0)
    dirs = np.where(keep[..., None], principal / np.where(norm > 0, norm, 1.0), 0.0)[..., None, :]
    values = np.where(keep, fa, 0.0)[..., None]
    return Peaks(dirs, values, np.full(values.shape, -1, dtype=np.int64),
                 {"source": "tensor", "values": "FA", "fa_threshold": float(fa_threshold)})
