"""``difftract track`` end to end: outputs, sidecar, reproducibility, refusals."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from difftract.io.nifti import save_nifti
from difftract.io.tractogram import load_tractogram


def scan_args(d):
    return [d / "dwi.nii.gz", d / "dwi.bval", d / "dwi.bvec", "--mask", d / "mask.nii.gz"]


@pytest.fixture(scope="module")
def fod(phantom_dir, fibercup, tmp_path_factory):
    """A CSD fODF (lmax 6, white matter only) of the phantom, with its sidecar naming the basis."""
    from dipy.core.gradients import gradient_table

    from difftract.reconst.csd import CsdModel

    gtab = gradient_table(fibercup.bvals, bvecs=fibercup.bvecs)
    fit = CsdModel(gtab, lmax=6, legacy=False).fit(fibercup.data, fibercup.wm, progress=False)
    path = tmp_path_factory.mktemp("fod") / "fod.nii.gz"
    save_nifti(path, fit.coeffs.astype(np.float32), fibercup.affine, sidecar={"sh_basis": "descoteaux07"})
    return path


def test_track_writes_a_tractogram_with_its_sidecar(cli, phantom_dir, fod, tmp_path):
    out = tmp_path / "det.trx"
    args = [*scan_args(phantom_dir), "--sh", fod, "--stop-mask", phantom_dir / "wm.nii.gz", "--seed-density", "1"]
    res = cli("track", *args, "--out", out)
    assert res.returncode == 0, res.stderr
    assert "det:" in res.stdout and "streamlines from 6,348 seeds" in res.stdout
    t = load_tractogram(out)
    record = json.loads((tmp_path / "det.json").read_text())
    assert record["command"] == "track" and record["n_streamlines"] == len(t) > 3000
    assert record["n_seeds"] == 6348 and record["sh_basis"] == "descoteaux07"
    assert record["params"]["method"] == "det" and record["params"]["step_mm"] == 1.0
    lengths = t.lengths_mm()
    assert lengths.min() > 19 - 1e-3 and lengths.max() < 250   # int(20 / 1) points at least: 19 steps (DIPY)
    wm = nib.load(phantom_dir / "wm.nii.gz").get_fdata() > 0
    voxels = np.rint(np.concatenate(list(t.streamlines))).astype(int)
    assert wm[tuple(voxels.T)].mean() > 0.999         # the stopping point is never kept

    again = cli("track", *args, "--out", out)
    assert again.returncode == 2 and "exists" in again.stderr
    scored = cli("score", out, "--phantom", phantom_dir)
    assert scored.returncode == 0 and "VB 7/7" in scored.stdout


def test_prob_is_reproducible_with_a_seed_and_streams_to_tck(cli, phantom_dir, fod, tmp_path):
    seeds = tmp_path / "seeds.txt"
    affine = nib.load(phantom_dir / "dwi.nii.gz").affine
    vox = np.argwhere(nib.load(phantom_dir / "wm.nii.gz").get_fdata() > 0)[::20]
    np.savetxt(seeds, vox @ affine[:3, :3].T + affine[:3, 3])
    args = [*scan_args(phantom_dir), "--sh", fod, "--stop-mask", phantom_dir / "wm.nii.gz", "--seeds-file", seeds,
            "--method", "prob", "--integrator", "rk2"]
    runs = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        res = cli("-q", "track", *args, "--seed", str(seed), "--out", tmp_path / f"{name}.tck")
        assert res.returncode == 0, res.stderr
        runs.append(load_tractogram(tmp_path / f"{name}.tck", reference=phantom_dir / "dwi.nii.gz").streamlines)
    a, b, c = (np.concatenate(list(r)) for r in runs)
    assert len(runs[0]) > 50 and np.array_equal(a, b)
    assert a.shape != c.shape or not np.array_equal(a, c)


def test_track_refuses_bad_input_and_leaves_nothing(cli, phantom_dir, fod, tmp_path):
    out = tmp_path / "t.trk"
    no_stop = cli("track", phantom_dir / "dwi.nii.gz", phantom_dir / "dwi.bval", phantom_dir / "dwi.bvec",
                  "--sh", fod, "--out", out)
    assert no_stop.returncode == 2 and "stopping rule" in no_stop.stderr

    bare = tmp_path / "bare.nii.gz"
    nib.save(nib.load(fod), bare)                                   # no sidecar: the basis is unknown
    unknown = cli("track", *scan_args(phantom_dir), "--sh", bare, "--out", out)
    assert unknown.returncode == 2 and "bare.nii.gz" in unknown.stderr and "--sh-basis" in unknown.stderr

    (tmp_path / "bad.txt").write_text("1 2\n3 4\n")
    bad_seeds = cli("track", *scan_args(phantom_dir), "--sh", fod, "--seeds-file", tmp_path / "bad.txt", "--out", out)
    assert bad_seeds.returncode == 2 and "bad.txt" in bad_seeds.stderr and "3 columns" in bad_seeds.stderr

    bad_step = cli("track", *scan_args(phantom_dir), "--sh", fod, "--step-mm", "0", "--out", out)
    assert bad_step.returncode == 2 and "step" in bad_step.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt", "bare.nii.gz"]
