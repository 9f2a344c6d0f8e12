"""Atomic outputs, --force semantics and provenance sidecars."""

from __future__ import annotations

import json

import numpy as np
import pytest

from difftract.errors import InputError, OutputExistsError
from difftract.io import atomic_directory, atomic_file, load_nifti, provenance, save_nifti, sidecar_path


def test_atomic_file_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_file_refuses_existing_and_force_replaces(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(OutputExistsError, match="use --force"):
        with atomic_file(target) as tmp:
            tmp.write_text("new")
    assert target.read_text() == "old"
    with atomic_file(target, force=True) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and len(list(tmp_path.iterdir())) == 1


def test_atomic_directory_replaces_whole_tree_only_on_success(tmp_path):
    out = tmp_path / "d"
    with atomic_directory(out) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(ValueError):
        with atomic_directory(out, force=True) as tmp:
            (tmp / "b").write_text("2")
            raise ValueError("fail midway")
    assert sorted(p.name for p in out.iterdir()) == ["a"]
    with atomic_directory(out, force=True) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


@pytest.mark.parametrize("name,expected", [("fa.nii.gz", "fa.json"), ("t.trx", "t.json"),
                                           ("sub-01_dwi.nii", "sub-01_dwi.json"), ("weird", "weird.json"),
                                           ("my.tracks.tck", "my.tracks.json")])
def test_sidecar_names_follow_bids(name, expected, tmp_path):
    assert sidecar_path(tmp_path / name) == tmp_path / expected


def test_save_nifti_with_sidecar_and_refusal(tmp_path):
    inp = tmp_path / "in.txt"
    inp.write_text("12345")
    rec = provenance("unit", {"a": np.float32(1.5), "b": (1, 2)}, seed=3, inputs=[inp], basis="descoteaux07")
    out = save_nifti(tmp_path / "x.nii.gz", np.ones((2, 2, 2), bool), np.eye(4), sidecar=rec)
    img = load_nifti(out)
    assert img.get_data_dtype() == np.uint8 and img.header["sform_code"] == 1
    side = json.loads((tmp_path / "x.json").read_text())
    assert side["seed"] == 3 and side["params"] == {"a": 1.5, "b": [1, 2]}
    assert side["inputs"] == [{"path": str(inp), "size_bytes": 5}] and side["basis"] == "descoteaux07"
    assert {"torch", "dipy", "nibabel"} <= set(side["versions"])
    (tmp_path / "x.nii.gz").unlink()
    with pytest.raises(OutputExistsError, match="x.json"):  # the sidecar alone blocks the write
        save_nifti(tmp_path / "x.nii.gz", np.ones((2, 2, 2)), np.eye(4), sidecar=rec)
    assert not (tmp_path / "x.nii.gz").exists()


def test_atomic_outputs_commit_together_or_not_at_all(tmp_path):
    from difftract.errors import ConfigError
    from difftract.io.atomic import atomic_outputs, check_outputs

    a, b, c = tmp_path / "a.nii.gz", tmp_path / "a.json", tmp_path / "sub" / "c.png"
    with atomic_outputs([a, b, c]) as stage:
        for p in (a, b, c):
            stage(p).write_text(p.name)
            assert not p.exists()
    assert all(p.read_text() == p.name for p in (a, b, c))
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_outputs([tmp_path / "x", tmp_path / "y"]) as stage:
            stage(tmp_path / "x").write_text("x")
            raise RuntimeError("boom")
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".*tmp*"))
    with pytest.raises(ConfigError, match="two outputs"):
        check_outputs([a, tmp_path / "." / "a.nii.gz"], force=True)
    (tmp_path / "d.nii.gz").mkdir()
    with pytest.raises(InputError, match="existing directory"):
        check_outputs([tmp_path / "d.nii.gz"], force=True)
    with pytest.raises(OutputExistsError):
        check_outputs([a])
    with pytest.raises(ValueError, match="not declared"):
        with atomic_outputs([tmp_path / "z"]) as stage:
            stage(tmp_path / "other")
