"""Running a per-voxel model over masked voxels in bounded-memory chunks.

Every reconstruction model works on a ``(V, N)`` signal matrix of the voxels in the
mask. The fits take either a 4D array or a :class:`MaskedSignal` (what
:func:`difftract.io.load_dwi` holds: only the brain's rows, never the whole grid);
:func:`masked_rows` gives the rows of a mask from either without copying the data,
:func:`map_chunks` feeds them to a torch kernel chunk by chunk (so memory is bounded
by ``chunk_size``, not by the volume), moves results back to numpy and shows a progress
bar on long fits; :func:`unmask` puts the rows back on the grid.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..threads import single_threaded_ops, worker_pool, worker_threads

DEFAULT_CHUNK = 50_000
CPU_CHUNK = 4_096   # on the CPU: a chunk's signal and temporaries stay in cache, and the workers share the chunks evenly
PROGRESS_MIN_VOXELS = 200_000  # smaller fits finish before a bar is worth drawing
_NUMPY = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}


class MaskedSignal:
    """The signal of the voxels of a mask only: ``rows (V, N)``, one row per mask voxel in C order.

    A whole-brain scan held this way takes the brain's rows (about a quarter of the grid
    for an HCP scan) and no background. ``shape`` and ``ndim`` are those of the 4D volume
    it stands for, so the fits' shape checks read it like an array; :func:`masked_rows`
    gives the rows of the held mask or of any mask inside it (e.g. the white matter).

    Attributes
    ----------
    rows : ndarray, (V, N)
        The signal of the held voxels (C order of the grid, as ``volume[mask]``).
    mask : ndarray of bool, (X, Y, Z)
        Which voxels are held; ``V == mask.sum()``.
    """

    def __init__(self, rows: np.ndarray, mask: np.ndarray):
        mask = np.asarray(mask, dtype=bool)
        if rows.ndim != 2 or rows.shape[0] != int(mask.sum()):
            raise ValueError(f"rows {rows.shape} must be (V, N) with V = {int(mask.sum())} voxels of the mask")
        self.rows, self.mask = rows, mask

    @property
    def shape(self) -> tuple[int, ...]:
        return self.mask.shape + (self.rows.shape[1],)

    @property
    def ndim(self) -> int:
        return self.mask.ndim + 1

    @property
    def dtype(self) -> np.dtype:
        return self.rows.dtype

    @property
    def complete(self) -> bool:
        """Whether every voxel of the grid is held (then ``rows`` is the volume, reshaped)."""
        return len(self.rows) == self.mask.size

    def positions(self, mask: np.ndarray) -> np.ndarray:
        """Row numbers of the voxels of ``mask`` (in C order); refuses a voxel that is not held."""
        mask = np.asarray(mask, dtype=bool)
        outside = int(np.count_nonzero(mask & ~self.mask))
        if outside:
            raise ConfigError(f"the mask reaches {outside} voxel(s) outside the {len(self.rows)} held (the brain "
                              "mask the scan was loaded with); use a mask inside the brain mask, or load the scan "
                              "with the larger mask")
        row_of = np.cumsum(self.mask.ravel(), dtype=np.int64) - 1
        return row_of[mask.ravel()]

    def volume(self, volumes: np.ndarray | None = None) -> np.ndarray:
        """The 4D ``(X, Y, Z, N)`` array (or of the given ``volumes`` only): zeros outside the held
        voxels; a view when all voxels and volumes are held."""
        if volumes is None and self.complete:
            return self.rows.reshape(self.shape)
        rows = self.rows if volumes is None else self.rows[:, volumes]
        out = np.zeros(self.mask.shape + rows.shape[1:], dtype=rows.dtype)
        out[self.mask] = rows
        return out

    def take(self, volumes: np.ndarray) -> "MaskedSignal":
        """The same voxels with only ``volumes`` (a copy of those columns: ``V x len(volumes)``)."""
        return MaskedSignal(np.take(self.rows, volumes, axis=1), self.mask)   # C order, one copy


def take_volumes(data: np.ndarray | MaskedSignal, volumes: np.ndarray) -> np.ndarray | MaskedSignal:
    """``data[..., volumes]`` for an array or a :class:`MaskedSignal` (which copies only its rows)."""
    return data.take(volumes) if isinstance(data, MaskedSignal) else data[..., volumes]


def volume_array(data: np.ndarray | MaskedSignal, volumes) -> np.ndarray:
    """``data[..., volumes]`` as a dense ``(X, Y, Z, k)`` array, for an array or a :class:`MaskedSignal`."""
    volumes = np.asarray(volumes)
    return data.volume(volumes) if isinstance(data, MaskedSignal) else np.asarray(data)[..., volumes]


def row_means(data: np.ndarray | MaskedSignal, mask: np.ndarray | None, volumes: np.ndarray,
              chunk_size: int = DEFAULT_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``volumes`` in each voxel of ``mask`` ``(V,)``, chunk by chunk, and the mask (see masked_rows)."""
    rows, mask = masked_rows(data, mask)
    means = [np.asarray(rows[a:a + chunk_size])[:, volumes].mean(axis=1) for a in range(0, rows.shape[0], chunk_size)]
    return (np.concatenate(means) if means else np.zeros(0, dtype=data.dtype)), mask


class MaskedRows:
    """The ``(V, N)`` signal of the voxels in a mask, read chunk by chunk without a full copy.

    ``rows[a:b]`` gathers voxels ``a`` to ``b`` (in C order of the grid) from the data by
    their coordinates, whatever the data's memory layout (NIfTI data are Fortran-ordered),
    or from the rows of a :class:`MaskedSignal` by their positions; ``len(rows)`` is the
    number of voxels in the mask.
    """

    def __init__(self, data: np.ndarray | MaskedSignal, mask: np.ndarray):
        if isinstance(data, MaskedSignal):
            self._data, self._coords = data.rows, (data.positions(mask),)
        else:
            self._data, self._coords = data, np.nonzero(mask)
        self.shape = (len(self._coords[0]), data.shape[-1])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, chunk: slice) -> np.ndarray:
        if not isinstance(chunk, slice):
            raise TypeError("MaskedRows supports slices of voxels only")
        return self._data[tuple(c[chunk] for c in self._coords)]


def masked_rows(data: np.ndarray | MaskedSignal, mask: np.ndarray | None
                ) -> tuple[np.ndarray | MaskedRows, np.ndarray]:
    """The signal of the voxels in ``mask`` as ``(V, N)`` rows read by slices, and the mask.

    ``mask`` None means all voxels of an array, and the held voxels of a
    :class:`MaskedSignal`. The held mask itself gives the held rows (no copy); another
    mask gives :class:`MaskedRows`, which gathers each chunk when it is read.
    """
    spatial = data.shape[:-1]
    if isinstance(data, MaskedSignal):
        if mask is None:
            return data.rows, data.mask
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != spatial:
            raise ValueError(f"mask shape {mask.shape} does not match the data grid {spatial}")
        if mask is data.mask or np.array_equal(mask, data.mask):
            return data.rows, data.mask
        return MaskedRows(data, mask), mask
    mask = np.ones(spatial, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if mask.shape != spatial:
        raise ValueError(f"mask shape {mask.shape} does not match the data grid {spatial}")
    return MaskedRows(data, mask), mask


def unmask(rows: np.ndarray, mask: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """Scatter ``(V, ...)`` rows back onto the grid of ``mask``; other voxels get ``fill``."""
    shape = mask.shape + rows.shape[1:]
    # zeros: the system hands out zeroed pages when they are first written, np.full writes them all
    out = np.zeros(shape, dtype=rows.dtype) if fill == 0 else np.full(shape, fill, dtype=rows.dtype)
    out[mask] = rows
    return out


def default_chunk(device: torch.device) -> int:
    """Voxels per chunk of the light per-voxel fits (DTI, SH): ``CPU_CHUNK`` on the CPU, ``DEFAULT_CHUNK`` on a GPU."""
    return CPU_CHUNK if device.type == "cpu" else DEFAULT_CHUNK


def map_chunks(kernel: Callable[[torch.Tensor], dict[str, torch.Tensor]], rows: np.ndarray | MaskedRows, *,
               device: torch.device, dtype: torch.dtype, chunk_size: int = DEFAULT_CHUNK,
               progress: bool | None = None, desc: str = "fitting",
               progress_min: int = PROGRESS_MIN_VOXELS, workers: int | None = None) -> dict[str, np.ndarray]:
    """Apply ``kernel`` to ``rows`` chunk by chunk and concatenate its outputs.

    On the CPU, ``workers`` chunks run at once, each on one thread (torch's intra-op
    threads are set to 1 meanwhile). The fits' kernels are many small operations
    (batched 45x45 factorisations, 7x7 solves, gathers) that torch's thread pool splits
    poorly: on a machine where other processes hold the cores its threads wait on each
    other at every operation (measured: 2 threads up to 6x slower than 1 on 2 busy
    cores), while whole chunks on separate threads never wait.

    Parameters
    ----------
    kernel : callable
        Takes a ``(v, N)`` tensor on ``device`` in ``dtype`` and returns a dict of
        tensors whose first axis is ``v``. It must not depend on other chunks. The
        chunk is its own (never a view of the caller's data): it may work in place.
    rows : ndarray or MaskedRows, (V, N)
        The signal of the voxels to fit.
    chunk_size : int
        Voxels per chunk; bounds the working memory (``workers`` chunks at a time).
    progress : bool or None
        Show a tqdm bar; None shows one when there are at least ``progress_min`` voxels
        (slow models pass a smaller number).
    workers : int or None
        Chunks at once; None: :func:`difftract.threads.worker_threads` (1 on a GPU).

    Returns
    -------
    dict of ndarray
        The kernel's outputs for all ``V`` voxels, in ``dtype`` as numpy arrays.
    """
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be at least 1, got {chunk_size}")
    n = rows.shape[0]
    if progress is None:
        progress = n >= progress_min
    if workers is None:
        workers = worker_threads(device=device)
    starts = range(0, n, chunk_size)
    workers = max(1, min(workers, len(starts)))

    def run(start: int) -> dict[str, np.ndarray]:
        block = np.asarray(rows[start:start + chunk_size])
        if isinstance(rows, MaskedRows) and device.type == "cpu" and block.dtype == _NUMPY[dtype]:
            chunk = torch.from_numpy(block)        # MaskedRows gathered a fresh array: the kernel's own
        else:
            # a copy: the rows may be the scan's own (a MaskedSignal), and a kernel may work in place
            chunk = torch.tensor(block, device=device, dtype=dtype)
        return {key: value.detach().cpu().numpy() for key, value in kernel(chunk).items()}

    outputs: dict[str, np.ndarray] = {}
    with tqdm(total=n, desc=desc, unit="vox", disable=not progress, leave=False) as bar:
        if workers == 1:
            for start in starts:
                # one thread per op here too (difftract.threads), per chunk
                with single_threaded_ops() if device.type == "cpu" else nullcontext():
                    result = run(start)
                _store(outputs, result, start, n)
                bar.update(min(chunk_size, n - start))
        else:
            with worker_pool(workers, "difftract-fit") as pool:
                for start, result in zip(starts, pool.map(run, starts)):
                    _store(outputs, result, start, n)
                    bar.update(min(chunk_size, n - start))
    if n == 0:  # still return the keys, with the right trailing shapes, by running on no voxels
        empty = kernel(torch.zeros((0, rows.shape[1]), device=device, dtype=dtype))
        outputs = {k: v.detach().cpu().numpy() for k, v in empty.items()}
    return outputs


def _store(outputs: dict[str, np.ndarray], result: dict[str, np.ndarray], start: int, n: int) -> None:
    """Write one chunk's results at ``start`` into the ``(n, ...)`` outputs (made at the first chunk)."""
    for key, value in result.items():
        if key not in outputs:
            outputs[key] = np.empty((n,) + value.shape[1:], dtype=value.dtype)
        outputs[key][start:start + len(value)] = value
