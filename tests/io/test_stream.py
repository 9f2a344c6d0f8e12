"""The streaming tractogram writer: chunks in, one file out, nothing left on failure."""

from __future__ import annotations

import json

import numpy as np
import pytest

from difftract.errors import ConfigError, DifftractError
from difftract.io.stream import open_writer
from difftract.io.tractogram import load_tractogram

AFFINE = np.array([[-2.0, 0, 0, 40], [0, 2.0, 0, -30], [0, 0, 2.5, 5], [0, 0, 0, 1]])
DIMS = (20, 21, 12)


def chunks(seed=0, n_chunks=3):
    rng = np.random.default_rng(seed)
    for _ in range(n_chunks):
        lengths = rng.integers(2, 12, size=rng.integers(1, 8))
        yield rng.uniform(0, 11, size=(int(lengths.sum()), 3)).astype(np.float32), lengths


@pytest.mark.parametrize("ext", [".trx", ".trk", ".tck"])
def test_chunks_round_trip_in_every_format(tmp_path, ext):
    path = tmp_path / f"tracks{ext}"
    expected = []
    with open_writer(path, AFFINE, DIMS, sidecar={"command": "test"}) as w:
        for points, lengths in chunks():
            w.write(points, lengths)
            expected += np.split(points, np.cumsum(lengths)[:-1])
    t = load_tractogram(path, reference=(AFFINE, DIMS))
    assert len(t) == len(expected) == w.n_streamlines
    for got, want in zip(t.streamlines, expected):
        np.testing.assert_allclose(got, want, atol=2e-5)
    assert json.loads((tmp_path / "tracks.json").read_text())["command"] == "test"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tracks.json", f"tracks{ext}"]


@pytest.mark.parametrize("ext", [".trx", ".trk", ".tck"])
def test_empty_output_is_a_valid_file(tmp_path, ext):
    with open_writer(tmp_path / f"e{ext}", AFFINE, DIMS):
        pass
    assert len(load_tractogram(tmp_path / f"e{ext}", reference=(AFFINE, DIMS))) == 0


def test_failure_leaves_nothing_and_existing_outputs_are_kept(tmp_path):
    path = tmp_path / "t.trx"
    with pytest.raises(RuntimeError):
        with open_writer(path, AFFINE, DIMS) as w:
            w.write(np.zeros((2, 3), np.float32), [2])
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    path.write_text("precious")
    with pytest.raises(DifftractError, match="exists"):
        open_writer(path, AFFINE, DIMS).__enter__()
    assert path.read_text() == "precious" and list(tmp_path.iterdir()) == [path]
    with open_writer(path, AFFINE, DIMS, force=True) as w:
        w.write(np.zeros((3, 3), np.float32), [3])
    assert len(load_tractogram(path)) == 1


def test_inconsistent_chunks_and_formats_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="unsupported"):
        open_writer(tmp_path / "t.vtk", AFFINE, DIMS).__enter__()
    with pytest.raises(ConfigError, match="lengths add up"):
        with open_writer(tmp_path / "t.trk", AFFINE, DIMS) as w:
            w.write(np.zeros((4, 3), np.float32), [2, 3])
    assert list(tmp_path.iterdir()) == []
