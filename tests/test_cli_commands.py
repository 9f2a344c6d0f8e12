"""``difftract fit dti|sh|csd`` and ``difftract score`` end to end: outputs, sidecars, QC, refusals."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np


def scan_args(d):
    return [d / "dwi.nii.gz", d / "dwi.bval", d / "dwi.bvec", "--mask", d / "mask.nii.gz"]


def test_fit_dti_writes_every_map_with_sidecars(cli, phantom_dir, tmp_path):
    out = tmp_path / "dti"
    res = cli("fit", "dti", *scan_args(phantom_dir), "--out-dir", out)
    assert res.returncode == 0, res.stderr
    assert "DTI WLS of" in res.stdout and "FA median" in res.stdout
    for name in ("tensor", "fa", "md", "ad", "rd", "rgb", "evals", "evecs", "v1", "s0"):
        img = nib.load(out / f"{name}.nii.gz")
        np.testing.assert_allclose(img.affine, nib.load(phantom_dir / "dwi.nii.gz").affine)
        record = json.loads((out / f"{name}.json").read_text())
        assert record["command"] == "fit dti" and record["params"]["fit_method"] == "WLS" and record["map"] == name
    assert (out / "qc_dti.png").stat().st_size > 10_000
    fa = nib.load(out / "fa.nii.gz").get_fdata()
    wm = nib.load(phantom_dir / "wm.nii.gz").get_fdata() > 0
    assert 0.5 < np.median(fa[wm]) < 0.9
    assert nib.load(out / "evecs.nii.gz").shape[-2:] == (3, 3)

    again = cli("fit", "dti", *scan_args(phantom_dir), "--out-dir", out)
    assert again.returncode == 2 and "use --force" in again.stderr
    forced = cli("-q", "fit", "dti", *scan_args(phantom_dir), "--out-dir", out, "--force", "--method", "ols",
                 "--tensor-format", "fsl")
    assert forced.returncode == 0, forced.stderr
    record = json.loads((out / "tensor.json").read_text())
    assert record["params"]["fit_method"] == "OLS" and record["params"]["tensor_format"] == "fsl"
    assert "FSL" in record["description"]


def test_fit_sh_writes_coefficients_sidecar_and_qc(cli, phantom_dir, tmp_path):
    out = tmp_path / "sh.nii.gz"
    res = cli("fit", "sh", *scan_args(phantom_dir), "--out", out, "--lmax", "4", "--legacy")
    assert res.returncode == 0, res.stderr
    assert nib.load(out).shape == (64, 64, 10, 15)
    record = json.loads((tmp_path / "sh.json").read_text())
    assert record["sh_basis"] == "descoteaux07_legacy" and record["params"]["lmax"] == 4
    assert record["params"]["legacy"] is True and record["params"]["smooth"] == 0.006
    assert (tmp_path / "sh_qc.png").exists()
    again = cli("fit", "sh", *scan_args(phantom_dir), "--out", out)
    assert again.returncode == 2 and "exists" in again.stderr


def test_fit_refuses_bad_inputs_and_writes_nothing(cli, phantom_dir, tmp_path):
    (tmp_path / "bad.bval").write_text("0 1000 1000\n")
    args = [phantom_dir / "dwi.nii.gz", tmp_path / "bad.bval", phantom_dir / "dwi.bvec"]
    res = cli("fit", "dti", *args, "--out-dir", tmp_path / "dti")
    assert res.returncode == 2 and "bad.bval" in res.stderr and res.stderr.count("\n") == 1
    assert not (tmp_path / "dti").exists()
    odd = cli("fit", "sh", *scan_args(phantom_dir), "--out", tmp_path / "sh.nii.gz", "--lmax", "5")
    assert odd.returncode == 2 and "lmax" in odd.stderr and not (tmp_path / "sh.nii.gz").exists()
    shell = cli("fit", "sh", *scan_args(phantom_dir), "--out", tmp_path / "sh.nii.gz", "--shell", "3000")
    assert shell.returncode == 2 and "b = 3000" in shell.stderr
    gpu = cli("fit", "dti", *scan_args(phantom_dir), "--out-dir", tmp_path / "dti", "--device", "cuda:7")
    assert gpu.returncode == 2 and "device" in gpu.stderr
    assert not list(tmp_path.glob("dti*")) and not list(tmp_path.glob(".*tmp*"))


def test_fit_csd_writes_fod_peaks_and_qc(cli, phantom_dir, tmp_path):
    fod, peaks = tmp_path / "fod.nii.gz", tmp_path / "peaks.nii.gz"
    res = cli("fit", "csd", *scan_args(phantom_dir), "--out", fod, "--peaks", peaks, "--lmax", "6",
              "--response", "0.0017,0.0004,0.0004,1000")
    assert res.returncode == 0, res.stderr
    assert nib.load(fod).shape == (64, 64, 10, 28) and nib.load(peaks).shape == (64, 64, 10, 9)
    record = json.loads((tmp_path / "fod.json").read_text())
    assert record["params"]["response"]["source"] == "given" and record["sh_basis"] == "descoteaux07"
    assert "npeaks" in json.loads((tmp_path / "peaks.json").read_text())["params"]
    assert (tmp_path / "fod_qc.png").exists()
    # the first peak follows the ground truth in single-fibre voxels
    from difftract.reconst.peaks import Peaks
    found = Peaks.from_volume(nib.load(peaks).get_fdata())
    truth = nib.load(phantom_dir / "gt" / "peaks.nii.gz").get_fdata()[..., :3]
    frac = nib.load(phantom_dir / "gt" / "fractions.nii.gz").get_fdata()
    single = (frac[..., 0] > 0.9) & (frac[..., 1] == 0)
    cosines = np.abs(np.sum(found.dirs[..., 0, :] * truth, axis=-1))[single]
    assert np.median(cosines) > np.cos(np.deg2rad(10))
    bad = cli("fit", "csd", *scan_args(phantom_dir), "--out", tmp_path / "x.nii.gz", "--response", "1,2")
    assert bad.returncode == 2 and "--response" in bad.stderr and not (tmp_path / "x.nii.gz").exists()


def test_colliding_or_blocked_outputs_leave_nothing(cli, phantom_dir, tmp_path):
    args = [*scan_args(phantom_dir), "--lmax", "4", "--response", "0.0017,0.0004,0.0004,1000"]
    same = cli("fit", "csd", *args, "--out", tmp_path / "f.nii.gz", "--peaks", tmp_path / "f.nii.gz")
    assert same.returncode == 2 and "two outputs" in same.stderr
    sidecars = cli("fit", "csd", *args, "--out", tmp_path / "f.nii.gz", "--peaks", tmp_path / "f.nii", "--force")
    assert sidecars.returncode == 2 and "f.json" in sidecars.stderr
    (tmp_path / "sh.nii.gz").mkdir()
    blocked = cli("fit", "sh", *scan_args(phantom_dir), "--out", tmp_path / "sh.nii.gz", "--force")
    assert blocked.returncode == 2 and "existing directory" in blocked.stderr
    bad_peaks = cli("fit", "csd", *args, "--out", tmp_path / "g.nii.gz", "--npeaks", "0")
    assert bad_peaks.returncode == 2 and "npeaks" in bad_peaks.stderr
    chunk = cli("fit", "dti", *scan_args(phantom_dir), "--out-dir", tmp_path / "dti", "--chunk-size", "0")
    assert chunk.returncode == 2 and "--chunk-size" in chunk.stderr
    smooth = cli("fit", "sh", *scan_args(phantom_dir), "--out", tmp_path / "s.nii.gz", "--smooth", "nan")
    assert smooth.returncode == 2 and "lambda" in smooth.stderr
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["sh.nii.gz"], left


def test_score_prints_a_table_and_writes_scilpy_keys(cli, phantom_dir, tmp_path):
    out = tmp_path / "metrics.json"
    res = cli("score", phantom_dir / "tractogram.trk", "--phantom", phantom_dir, "--json", out)
    assert res.returncode == 0, res.stderr
    assert "VB 7/7" in res.stdout and "horizontal" in res.stdout and "mean OL" in res.stdout
    scores = json.loads(out.read_text())
    assert scores["VB"] == 7 and scores["VS_ratio"] >= 0.95 and scores["mean_OL"] >= 0.8
    assert {"IC", "NC", "IB", "mean_OR_vs", "mean_OR_gt", "mean_f1", "provenance"} <= set(scores)
    assert set(scores["bundle_wise"]["arc"]) >= {"TP", "FP", "FN", "OL", "OR_pct_vs", "OR_pct_gt", "f1"}
    again = cli("score", phantom_dir / "tractogram.trk", "--phantom", phantom_dir, "--json", out)
    assert again.returncode == 2 and "exists" in again.stderr
    bad = cli("score", phantom_dir / "tractogram.trk", "--phantom", tmp_path)
    assert bad.returncode == 2 and "scoring" in bad.stderr
    itself = cli("score", phantom_dir / "tractogram.trk", "--phantom", phantom_dir, "--json",
                 phantom_dir / "tractogram.trk", "--force")
    assert itself.returncode == 2 and "would overwrite the input" in itself.stderr


def test_score_refuses_another_grid_and_warns_off_grid(cli, phantom_dir, tmp_path):
    from difftract.io.tractogram import Tractogram, save_tractogram

    affine = nib.load(phantom_dir / "mask.nii.gz").affine
    save_tractogram(Tractogram([np.array([[1.0, 1, 1], [3, 3, 3]])], affine, (64, 64, 10)), tmp_path / "ok.tck")
    same = cli("score", tmp_path / "ok.tck", "--phantom", phantom_dir, "--reference", phantom_dir / "wm.nii.gz")
    assert same.returncode == 0, same.stderr
    small = np.diag([2.0, 2.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.uint8), small), tmp_path / "small.nii.gz")
    other = cli("score", tmp_path / "ok.tck", "--phantom", phantom_dir, "--reference", tmp_path / "small.nii.gz")
    assert other.returncode == 2 and "grid" in other.stderr
    save_tractogram(Tractogram([np.array([[-5.0, 1, 1], [3, 3, 3]])], affine, (64, 64, 10)), tmp_path / "off.trk")
    off = cli("score", tmp_path / "off.trk", "--phantom", phantom_dir)
    assert off.returncode == 0 and "1 streamline(s) have points off the grid" in off.stderr
