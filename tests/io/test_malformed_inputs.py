"""Malformed inputs: loading refuses each with one line that names the file, the problem and what to do.

The cases an adversarial run of ``difftract run`` will feed in; a few are accepted on
purpose, with a note (NaN directions of b0 volumes, anisotropic voxels, a one-voxel-thick
slab, label masks, trailing singleton axes).
"""

from __future__ import annotations

import gzip
import logging

import nibabel as nib
import numpy as np
import pytest

from difftract.errors import InputError
from difftract.io import load_dwi


def _vec(path, rows):
    path.write_text("\n".join(" ".join(f"{v:g}" for v in r) for r in rows) + "\n")


def _nii(path, data, affine):
    nib.save(nib.Nifti1Image(data, affine), path)


def _break(case, s):
    """Make scan ``s`` (see conftest's ``scan``) bad in the way ``case`` names."""
    aff, data, bvals, bvecs = s["affine"], s["data"], s["bvals"], s["bvecs"]
    if case == "count_mismatch":
        s["bval"].write_text(" ".join(f"{b:g}" for b in np.r_[bvals, 1000]) + "\n")
    elif case == "bvec_2xN":
        _vec(s["bvec"], bvecs.T[:2])
    elif case == "bvec_4xN":
        _vec(s["bvec"], np.vstack([bvecs.T, np.ones(len(bvals))]))
    elif case == "zero_bvec_dw":
        v = bvecs.copy()
        v[3] = 0
        _vec(s["bvec"], v.T)
    elif case == "no_b0":
        s["bval"].write_text(" ".join(["1000"] * len(bvals)) + "\n")
        v = bvecs.copy()
        v[0] = [1, 0, 0]
        _vec(s["bvec"], v.T)
    elif case == "bvals_si":
        s["bval"].write_text(" ".join(f"{b * 1e6:g}" for b in bvals) + "\n")
    elif case == "bvals_ms_um2":
        s["bval"].write_text(" ".join(f"{b / 1000:g}" for b in bvals) + "\n")
    elif case == "dwi_3d":
        _nii(s["dwi"], data[..., 0], aff)
    elif case == "dwi_5d":
        _nii(s["dwi"], data[..., None, :], aff)        # (x, y, z, 1, N): volumes on the 5th axis
    elif case == "dwi_nan":
        d = data.copy()
        d[1, 1, 1, 2] = np.nan
        _nii(s["dwi"], d, aff)
    elif case == "dwi_zero":
        _nii(s["dwi"], np.zeros_like(data), aff)
    elif case == "b0_zero":
        d = data.copy()
        d[..., 0] = 0
        _nii(s["dwi"], d, aff)
    elif case == "mask_empty":
        _nii(s["mask"], np.zeros(data.shape[:3], np.uint8), aff)
    elif case == "mask_grid":
        _nii(s["mask"], np.ones((4, 5, 4), np.uint8), aff)
    elif case == "mask_affine":
        other = aff.copy()
        other[:3, 3] += 0.5
        _nii(s["mask"], np.ones(data.shape[:3], np.uint8), other)
    elif case == "dwi_truncated":
        raw = s["dwi"].read_bytes()
        s["dwi"].write_bytes(raw[: len(raw) * 2 // 3])
    elif case == "dwi_truncated_header":
        s["dwi"].write_bytes(s["dwi"].read_bytes()[:60])
    elif case == "dwi_not_gzip":
        s["dwi"].write_bytes(nib.Nifti1Image(data, aff).to_bytes())     # an uncompressed NIfTI named .nii.gz
    elif case == "dwi_gzip_named_nii":
        s["dwi"] = s["dwi"].with_name("dwi.nii")
        s["dwi"].write_bytes(gzip.compress(nib.Nifti1Image(data, aff).to_bytes()))
    elif case == "dwi_not_nifti":
        s["dwi"].write_text("not an image\n")
    elif case == "dwi_gzip_not_nifti":
        s["dwi"].write_bytes(gzip.compress(b"hello " * 200))
    elif case == "dwi_empty":
        s["dwi"].write_bytes(b"")
    elif case == "dwi_is_dir":
        s["dwi"].unlink()
        s["dwi"].mkdir()
    elif case == "bval_is_dir":
        s["bval"].unlink()
        s["bval"].mkdir()
    elif case == "mask_is_dir":
        s["mask"].unlink()
        s["mask"].mkdir()
    else:
        raise KeyError(case)


# case: (file named first, words the one-line message must hold)
REFUSED = {
    "count_mismatch": ("bval", ["bval has 8 values but the DWI has 7 volumes", "belong to this DWI"]),
    "bvec_2xN": ("bvec", ["bvec must have 3 rows (FSL layout 3 x N), found 2 x 7", "one x, y, z direction"]),
    "bvec_4xN": ("bvec", ["bvec must have 3 rows (FSL layout 3 x N), found 4 x 7"]),
    "zero_bvec_dw": ("bvec", ["zero gradient direction (first at volume 3, b = 1000)", "if it is a b0"]),
    "no_b0": ("bval", ["no b0 volume (b <= 50)", "add the scan's b0 volume(s)"]),
    "bvals_si": ("bval", ["look like s/m^2", "divide them by 1e6"]),
    "bvals_ms_um2": ("bval", ["no diffusion-weighted volume", "multiply them by 1000"]),
    "dwi_3d": ("dwi", ["DWI must be 4D (x, y, z, volumes), found 3D", "give the whole diffusion series"]),
    "dwi_5d": ("dwi", ["found 5D shape (4, 5, 3, 1, 7)", "put the volumes on the 4th axis"]),
    "dwi_nan": ("dwi", ["1 NaN/Inf value(s) in 1 voxel(s)", "--zero-nonfinite"]),
    "dwi_zero": ("dwi", ["DWI is all zeros"]),
    "b0_zero": ("dwi", ["b0 volume(s) [0] hold no signal", "bval file matches"]),
    "mask_empty": ("mask", ["mask is empty", "brain set to 1"]),
    "mask_grid": ("mask", ["mask shape (4, 5, 4) differs from the DWI grid (4, 5, 3)", "resample it"]),
    "mask_affine": ("mask", ["mask affine differs from the DWI affine (largest difference 0.5 mm)", "resample it"]),
    "dwi_truncated": ("dwi", ["truncated", "copy or convert it again"]),
    "dwi_truncated_header": ("dwi", ["truncated", "copy or convert it again"]),
    "dwi_not_gzip": ("dwi", ["named .gz but is an uncompressed NIfTI", "rename it to .nii"]),
    "dwi_gzip_named_nii": ("dwi", ["gzip-compressed but named .nii: rename it to .nii.gz"]),
    "dwi_not_nifti": ("dwi", ["named .gz but is not gzip-compressed, and not NIfTI either"]),
    "dwi_gzip_not_nifti": ("dwi", ["cannot read DWI as NIfTI", "dcm2niix"]),
    "dwi_empty": ("dwi", ["DWI file is empty (0 bytes)"]),
    "dwi_is_dir": ("dwi", ["DWI path is a directory, expected a NIfTI file"]),
    "mask_is_dir": ("mask", ["mask path is a directory"]),
    "bval_is_dir": ("bval", ["bval path is a directory, expected a text file"]),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_with_one_line_naming_the_file(scan, case):
    s = scan()
    which, words = REFUSED[case]
    _break(case, s)
    with pytest.raises(InputError) as info:
        load_dwi(s["dwi"], s["bval"], s["bvec"], s["mask"])
    message = str(info.value)
    assert message.startswith(f"{s[which]}: "), message
    assert "\n" not in message and message.count(str(s[which])) == 1, message
    for w in words:
        assert w in message, (w, message)


@pytest.mark.parametrize("case", ["count_mismatch", "dwi_5d", "mask_affine", "dwi_not_gzip"])
def test_refused_by_run_with_exit_2_and_one_line(cli, scan, tmp_path, case):
    s = scan()
    _break(case, s)
    res = cli("run", s["tmp"], "--out", tmp_path / "out")
    assert res.returncode == 2, res.stderr
    lines = [l for l in res.stderr.strip().splitlines() if not l.startswith(("difftract: note:", "difftract: warning:"))]
    assert len(lines) == 1 and lines[0].startswith("difftract: error: ") and REFUSED[case][1][0] in lines[0]
    assert not (tmp_path / "out").exists()


def test_nan_direction_on_b0_accepted_on_dw_refused(scan, caplog):
    s = scan(n_b0=2)
    v = s["bvecs"].copy().T.astype(object)
    v[:, 1] = "nan"                                            # the second b0
    s["bvec"].write_text("\n".join(" ".join(str(x) for x in r) for r in v) + "\n")
    with caplog.at_level(logging.INFO, logger="difftract"):
        dwi = load_dwi(s["dwi"], s["bval"], s["bvec"])
    assert np.all(dwi.bvecs[1] == 0) and "1 b0 volume(s) have a NaN direction" in caplog.text
    v[:, 4] = "nan"
    s["bvec"].write_text("\n".join(" ".join(str(x) for x in r) for r in v) + "\n")
    with pytest.raises(InputError, match=r"NaN on 1 diffusion-weighted volume\(s\) \(first: volume 4, b = 1000\)"):
        load_dwi(s["dwi"], s["bval"], s["bvec"])


def test_non_unit_directions_normalised_with_a_warning(scan):
    from difftract.errors import DifftractWarning

    s = scan()
    _vec(s["bvec"], (s["bvecs"] * 0.5).T)
    with pytest.warns(DifftractWarning, match="not scaled by the squared norm"):
        dwi = load_dwi(s["dwi"], s["bval"], s["bvec"])
    np.testing.assert_allclose(np.linalg.norm(dwi.bvecs[1:], axis=1), 1.0)


def test_anisotropic_voxels_accepted_with_a_note(scan, caplog):
    s = scan(affine=np.diag([2.0, 2.0, 3.5, 1.0]))
    with caplog.at_level(logging.INFO, logger="difftract"):
        dwi = load_dwi(s["dwi"], s["bval"], s["bvec"], s["mask"])
    np.testing.assert_allclose(dwi.voxel_sizes, [2, 2, 3.5])
    assert "anisotropic voxels 2 x 2 x 3.5 mm" in caplog.text


def test_trailing_singleton_axes_are_dropped(scan):
    s = scan()
    _nii(s["dwi"], s["data"][..., None], s["affine"])          # (x, y, z, N, 1)
    assert load_dwi(s["dwi"], s["bval"], s["bvec"]).data.shape == (4, 5, 3, 7)


def test_label_mask_accepted_with_a_note_probability_mask_with_a_warning(scan, caplog):
    s = scan()
    labels = np.zeros((4, 5, 3), np.uint8)
    labels[1:3, 1:3, 1] = 255
    _nii(s["mask"], labels, s["affine"])
    with caplog.at_level(logging.INFO, logger="difftract"):
        assert load_dwi(s["dwi"], s["bval"], s["bvec"], s["mask"]).mask.sum() == 4
    assert "not binary (2 distinct values" in caplog.text
    caplog.clear()
    prob = np.linspace(0, 1, 60).reshape(4, 5, 3).astype(np.float32)
    _nii(s["mask"], prob, s["affine"])
    with caplog.at_level(logging.WARNING, logger="difftract"):
        dwi = load_dwi(s["dwi"], s["bval"], s["bvec"], s["mask"])
    assert dwi.mask.sum() == 59
    assert "probability map" in caplog.text and "29 of them below 0.5" in caplog.text and "-thr 0.5 -bin" in caplog.text


def test_one_voxel_thick_scan_fits_and_tracks(cli, tmp_path):
    """A single slice: DTI and CSD are per voxel, tracking runs in the slice; accepted with a note."""
    from dipy.data import get_fnames

    dwi, bval, bvec = get_fnames(name="small_25")
    img = nib.load(dwi)
    data = np.asanyarray(img.dataobj)[:, :, :1]
    _nii(tmp_path / "dwi.nii.gz", data, img.affine)
    _nii(tmp_path / "mask.nii.gz", np.ones(data.shape[:3], np.uint8), img.affine)
    scan = [tmp_path / "dwi.nii.gz", bval, bvec, "--mask", tmp_path / "mask.nii.gz"]
    res = cli("check", *scan)
    assert res.returncode == 0 and "one voxel thick along z (10, 8, 1)" in res.stderr
    assert cli("fit", "dti", *scan, "--out-dir", tmp_path / "dti").returncode == 0
    assert cli("fit", "csd", *scan, "--out", tmp_path / "fod.nii.gz").returncode == 0
    res = cli("track", *scan, "--sh", tmp_path / "fod.nii.gz", "--min-len-mm", "4", "--out", tmp_path / "t.trx")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "t.trx").exists()
