"""Running a per-voxel model over masked voxels in bounded-memory chunks.

Every reconstruction model works on a ``(V, N)`` signal matrix of the voxels in the
mask. :func:`map_chunks` feeds it to a torch kernel chunk by chunk (so memory is bounded
by ``chunk_size``, not by the volume), moves results back to numpy and shows a progress
bar on long fits; :func:`unmask` puts the rows back on the grid.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import ConfigError

DEFAULT_CHUNK = 50_000
PROGRESS_MIN_VOXELS = 200_000  # smaller fits finish before a bar is worth drawing


class MaskedRows:
    """The ``(V, N)`` signal of the voxels in a mask, read chunk by chunk without a full copy.

    ``rows[a:b]`` gathers voxels ``a`` to ``b`` (in C order of the grid) from the data by
    their coordinates, whatever the data's memory layout (NIfTI data are Fortran-ordered);
    ``len(rows)`` is the number of voxels in the mask.
    """

    def __init__(self, data: np.ndarray, mask: np.ndarray):
        self._data = data
        self._coords = np.nonzero(mask)
        self.shape = (len(self._coords[0]), data.shape[-1])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, chunk: slice) -> np.ndarray:
        if not isinstance(chunk, slice):
            raise TypeError("MaskedRows supports slices of voxels only")
        return self._data[tuple(c[chunk] for c in self._coords)]


def masked_rows(data: np.ndarray, mask: np.ndarray | None) -> tuple[MaskedRows, np.ndarray]:
    """The signal of the voxels in ``mask`` (all voxels when None), as :class:`MaskedRows`, and the mask."""
    spatial = data.shape[:-1]
    mask = np.ones(spatial, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if mask.shape != spatial:
        raise ValueError(f"mask shape {mask.shape} does not match the data grid {spatial}")
    return MaskedRows(data, mask), mask


def unmask(rows: np.ndarray, mask: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """Scatter ``(V, ...)`` rows back onto the grid of ``mask``; other voxels get ``fill``."""
    out = np.full(mask.shape + rows.shape[1:], fill, dtype=rows.dtype)
    out[mask] = rows
    return out


def map_chunks(kernel: Callable[[torch.Tensor], dict[str, torch.Tensor]], rows: np.ndarray | MaskedRows, *,
               device: torch.device, dtype: torch.dtype, chunk_size: int = DEFAULT_CHUNK,
               progress: bool | None = None, desc: str = "fitting",
               progress_min: int = PROGRESS_MIN_VOXELS) -> dict[str, np.ndarray]:
    """Apply ``kernel`` to ``rows`` chunk by chunk and concatenate its outputs.

    Parameters
    ----------
    kernel : callable
        Takes a ``(v, N)`` tensor on ``device`` in ``dtype`` and returns a dict of
        tensors whose first axis is ``v``.
    rows : ndarray or MaskedRows, (V, N)
        The signal of the voxels to fit.
    chunk_size : int
        Voxels per chunk; bounds the working memory.
    progress : bool or None
        Show a tqdm bar; None shows one when there are at least ``progress_min`` voxels
        (slow models pass a smaller number).

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
    outputs: dict[str, np.ndarray] = {}
    with tqdm(total=n, desc=desc, unit="vox", disable=not progress, leave=False) as bar:
        for start in range(0, n, chunk_size):
            chunk = torch.as_tensor(np.ascontiguousarray(rows[start:start + chunk_size]))
            result = kernel(chunk.to(device=device, dtype=dtype))
            for key, value in result.items():
                value = value.detach().cpu().numpy()
                if key not in outputs:
                    outputs[key] = np.empty((n,) + value.shape[1:], dtype=value.dtype)
                outputs[key][start:start + len(value)] = value
            bar.update(len(chunk))
    if n == 0:  # still return the keys, with the right trailing shapes, by running on no voxels
        empty = kernel(torch.zeros((0, rows.shape[1]), device=device, dtype=dtype))
        outputs = {k: v.detach().cpu().numpy() for k, v in empty.items()}
    return outputs
