"""The phantom directory on disk: layout, round trips, handedness, refusal."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from difftract.errors import OutputExistsError
from difftract.io import load_dwi, load_mask
from difftract.io.tractogram import load_tractogram
from difftract.phantom import PhantomConfig, save_phantom, simulate

LAYOUT = ["dwi.nii.gz", "dwi.bval", "dwi.bvec", "mask.nii.gz", "wm.nii.gz", "dwi.json", "tractogram.trk",
          "tractogram.json", "qc_phantom.png", "gt/scoring.json", "gt/fractions.nii.gz", "gt/peaks.nii.gz"]


def test_layout_and_scoring_json(phantom_dir, fibercup):
    for rel in LAYOUT:
        assert (phantom_dir / rel).is_file(), rel
    scoring = json.loads((phantom_dir / "gt" / "scoring.json").read_text())
    assert list(scoring) == [b.name for b in fibercup.bundles]
    for name, entry in scoring.items():
        assert entry == {"head": f"rois/{name}_head.nii.gz", "tail": f"rois/{name}_tail.nii.gz",
                         "gt_mask": f"masks/{name}.nii.gz"}
        for rel in entry.values():
            assert (phantom_dir / "gt" / rel).is_file()
        assert (phantom_dir / "gt" / "bundles" / f"{name}.trk").is_file()
    side = json.loads((phantom_dir / "dwi.json").read_text())
    assert side["command"] == "simulate" and side["seed"] == 0 and side["params"]["preset"] == "fibercup"


def test_files_read_back_as_simulated(phantom_dir, fibercup):
    dwi = load_dwi(phantom_dir / "dwi.nii.gz", phantom_dir / "dwi.bval", phantom_dir / "dwi.bvec",
                   phantom_dir / "mask.nii.gz")
    np.testing.assert_array_equal(dwi.signal.rows, fibercup.data[fibercup.mask])   # load_dwi holds the mask's voxels
    np.testing.assert_allclose(dwi.bvecs, fibercup.bvecs, atol=1e-7)
    np.testing.assert_array_equal(dwi.mask, fibercup.mask)
    np.testing.assert_array_equal(load_mask(phantom_dir / "gt/masks/fan.nii.gz"), fibercup.bundles[3].mask)
    whole = load_tractogram(phantom_dir / "tractogram.trk")
    assert len(whole) == 1400
    np.testing.assert_allclose(whole.streamlines[0], fibercup.streamlines[0], atol=1e-4)
    np.testing.assert_array_equal(np.ravel(whole.data_per_streamline["bundle"])[[0, 200, 1399]], [0, 1, 6])
    fan = load_tractogram(phantom_dir / "gt/bundles/fan.trk")
    np.testing.assert_allclose(fan.streamlines[-1], fibercup.bundles[3].streamlines[-1], atol=1e-4)


def test_radiological_phantom_has_same_arrays_and_flipped_files(tmp_path):
    cfg = dict(preset="crossing", streamlines_per_bundle=10, seed=2)
    ras = save_phantom(simulate(PhantomConfig(**cfg)), tmp_path / "ras")
    las = save_phantom(simulate(PhantomConfig(radiological=True, **cfg)), tmp_path / "las")
    a_ras, a_las = nib.load(ras / "dwi.nii.gz").affine, nib.load(las / "dwi.nii.gz").affine
    assert np.linalg.det(a_ras[:3, :3]) > 0 > np.linalg.det(a_las[:3, :3])
    v_ras, v_las = np.loadtxt(ras / "dwi.bvec"), np.loadtxt(las / "dwi.bvec")
    np.testing.assert_allclose(v_ras[0], -v_las[0], atol=1e-7)  # FSL x flips with handedness
    np.testing.assert_allclose(v_ras[1:], v_las[1:], atol=1e-7)
    d_ras = load_dwi(ras / "dwi.nii.gz", ras / "dwi.bval", ras / "dwi.bvec")
    d_las = load_dwi(las / "dwi.nii.gz", las / "dwi.bval", las / "dwi.bvec")
    np.testing.assert_array_equal(d_ras.data, d_las.data)
    np.testing.assert_allclose(d_ras.bvecs, d_las.bvecs, atol=1e-7)
    t_ras, t_las = load_tractogram(ras / "tractogram.trk"), load_tractogram(las / "tractogram.trk")
    np.testing.assert_allclose(t_ras.streamlines.get_data(), t_las.streamlines.get_data(), atol=1e-4)
    r, l = t_ras.to_rasmm().get_data(), t_las.to_rasmm().get_data()
    np.testing.assert_allclose(r[:, 0], -l[:, 0], atol=1e-3)  # mirrored in world space


def test_existing_directory_refused_untouched_and_force_replaces(tmp_path):
    small = simulate(PhantomConfig(preset="crossing", streamlines_per_bundle=5))
    out = save_phantom(small, tmp_path / "p")
    before = sorted(p.name for p in out.rglob("*"))
    (out / "extra.txt").write_text("mine")
    with pytest.raises(OutputExistsError):
        save_phantom(small, out)
    assert (out / "extra.txt").exists()
    save_phantom(small, out, force=True)
    assert sorted(p.name for p in out.rglob("*")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]
