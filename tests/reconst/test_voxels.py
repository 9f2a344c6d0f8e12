"""Chunked per-voxel fitting: masked rows without copies, chunk independence, empty masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from difftract.errors import ConfigError
from difftract.reconst.voxels import MaskedSignal, map_chunks, masked_rows, unmask


def kernel(x):
    return {"sum": x.sum(dim=1), "pair": x[:, :2] * 2}


def test_masked_rows_and_unmask_round_trip():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(4, 5, 6, 3))
    mask = rng.random((4, 5, 6)) > 0.5
    rows, m = masked_rows(data, mask)
    assert len(rows) == mask.sum() and rows.shape == (mask.sum(), 3)
    np.testing.assert_array_equal(rows[0:len(rows)], data[mask])
    np.testing.assert_array_equal(rows[3:7], data[mask][3:7])
    back = unmask(data[mask], m, fill=-1.0)
    np.testing.assert_array_equal(back[mask], data[mask])
    assert np.all(back[~mask] == -1)
    with pytest.raises(TypeError):
        rows[3]
    with pytest.raises(ValueError, match="mask shape"):
        masked_rows(data, mask[:3])


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_map_chunks_is_chunk_independent(chunk, workers):
    data = np.arange(5 * 4 * 3 * 4, dtype=np.float64).reshape(5, 4, 3, 4)
    rows, mask = masked_rows(data, None)
    threads = torch.get_num_threads()
    out = map_chunks(kernel, rows, device=torch.device("cpu"), dtype=torch.float64, chunk_size=chunk,
                     workers=workers)
    assert torch.get_num_threads() == threads                  # the workers' single-threaded setting is undone
    # exact: integer-valued float64 data, so torch's and numpy's sums are exact in any order or batch
    np.testing.assert_array_equal(out["sum"], data.reshape(-1, 4).sum(1))
    np.testing.assert_array_equal(out["pair"], data.reshape(-1, 4)[:, :2] * 2)


def test_empty_mask_and_bad_chunk():
    data = np.ones((2, 2, 2, 4))
    rows, mask = masked_rows(data, np.zeros((2, 2, 2), bool))
    out = map_chunks(kernel, rows, device=torch.device("cpu"), dtype=torch.float32)
    assert out["sum"].shape == (0,) and out["pair"].shape == (0, 2) and out["pair"].dtype == np.float32
    with pytest.raises(ValueError, match="chunk_size"):
        map_chunks(kernel, rows, device=torch.device("cpu"), dtype=torch.float32, chunk_size=0)


def test_fortran_ordered_data_read_by_coordinates():
    """NIfTI data come Fortran-ordered: rows must still be the masked voxels in C order."""
    rng = np.random.default_rng(1)
    data = np.asfortranarray(rng.normal(size=(5, 6, 7, 4)))
    mask = rng.random((5, 6, 7)) > 0.3
    rows, _ = masked_rows(data, mask)
    np.testing.assert_array_equal(rows[0:len(rows)], data[mask])
    np.testing.assert_array_equal(rows[5:11], data[mask][5:11])


def test_masked_signal_rows_sub_masks_and_volume():
    rng = np.random.default_rng(2)
    data = rng.normal(size=(5, 4, 3, 6)).astype(np.float32)
    held = rng.random((5, 4, 3)) > 0.3
    signal = MaskedSignal(data[held], held)
    assert signal.shape == data.shape and signal.ndim == 4 and not signal.complete
    rows, mask = masked_rows(signal, None)                 # None: the held voxels, the held rows themselves
    assert rows is signal.rows and mask is signal.mask
    assert masked_rows(signal, held.copy())[0] is signal.rows
    sub = held & (rng.random(held.shape) > 0.5)
    rows, mask = masked_rows(signal, sub)
    np.testing.assert_array_equal(rows[0:len(rows)], data[sub])
    np.testing.assert_array_equal(rows[2:5], data[sub][2:5])
    with pytest.raises(ConfigError, match=r"reaches 1 voxel\(s\) outside"):
        masked_rows(signal, held | (np.arange(held.size).reshape(held.shape) == np.flatnonzero(~held)[0]))
    full = signal.volume()
    np.testing.assert_array_equal(full[held], data[held])
    assert not full[~held].any()
    np.testing.assert_array_equal(signal.volume(np.array([4, 1])), full[..., [4, 1]])
    np.testing.assert_array_equal(signal.take(np.array([0, 5])).rows, data[held][:, [0, 5]])
    everything = MaskedSignal(data.reshape(-1, 6).copy(), np.ones(held.shape, bool))
    assert everything.complete and np.shares_memory(everything.volume(), everything.rows)
    with pytest.raises(ValueError, match="rows"):
        MaskedSignal(data[held][1:], held)


def test_map_chunks_never_hands_the_kernel_the_held_rows():
    """A kernel working in place must not change the scan (the chunk is a copy, even in the rows' dtype)."""
    signal = MaskedSignal(np.ones((10, 3), np.float32), np.ones((10, 1, 1), bool))

    def in_place(x):
        x.mul_(0)
        return {"x": x}

    rows, _ = masked_rows(signal, None)
    map_chunks(in_place, rows, device=torch.device("cpu"), dtype=torch.float32, chunk_size=4)
    assert np.all(signal.rows == 1)


def test_map_chunks_never_hands_the_kernel_the_callers_array():
    """Gathered rows are handed over without a copy: they must still be fresh, not the caller's data."""
    data = np.ones((4, 3, 2, 5))
    rows, _ = masked_rows(data, np.ones((4, 3, 2), bool))

    def in_place(x):
        x.mul_(0)
        return {"x": x}

    map_chunks(in_place, rows, device=torch.device("cpu"), dtype=torch.float64, chunk_size=5, workers=2)
    assert np.all(data == 1)
