"""load_dwi: the happy path, both affine handednesses, and every bad input."""

from __future__ import annotations

import logging
import gzip

import nibabel as nib
import numpy as np
import pytest

from difftract.errors import DifftractWarning, InputError
from difftract.io import load_dwi, load_subject, write_bvals_bvecs
from difftract.io.gradients import flip_for_fsl


def _load(s, **kw):
    return load_dwi(s["dwi"], s["bval"], s["bvec"], s.get("mask_arg"), **kw)


def test_loads_float32_data_gtab_and_mask(scan):
    s = scan()
    dwi = load_dwi(s["dwi"], s["bval"], s["bvec"], s["mask"])
    assert dwi.data.dtype == np.float32 and dwi.data.shape == (4, 5, 3, 7)
    np.testing.assert_allclose(dwi.data, s["data"])
    np.testing.assert_allclose(dwi.voxel_sizes, [2, 2, 2])
    np.testing.assert_array_equal(dwi.gtab.b0s_mask, s["bvals"] <= 50)
    assert dwi.mask.dtype == bool and dwi.mask.all()
    assert "volumes=7" in repr(dwi)


@pytest.mark.parametrize("det_sign", [1.0, -1.0])
def test_fsl_x_flip_follows_affine_handedness(scan, det_sign):
    affine = np.diag([2.0 * det_sign, 2.0, 2.0, 1.0])
    s = scan(affine=affine)
    dwi = load_dwi(s["dwi"], s["bval"], s["bvec"])
    expected = s["bvecs"].copy()
    if det_sign > 0:  # FSL flips x for positive-determinant images
        expected[:, 0] *= -1
    np.testing.assert_allclose(dwi.bvecs, expected, atol=1e-6)


@pytest.mark.parametrize("det_sign", [1.0, -1.0])
def test_written_gradients_read_back_in_array_frame(scan, tmp_path, det_sign):
    affine = np.array([[2.0 * det_sign, 0.1, 0, -10], [0, 2, 0.2, 5], [0, 0, 2, 3], [0, 0, 0, 1]])
    s = scan(affine=affine)
    array_frame = s["bvecs"]
    write_bvals_bvecs(s["bval"], s["bvec"], s["bvals"], array_frame, affine, force=True)
    on_disk = np.loadtxt(s["bvec"]).T
    np.testing.assert_allclose(on_disk[:, 0], array_frame[:, 0] * (-1 if det_sign > 0 else 1), atol=1e-7)
    dwi = load_dwi(s["dwi"], s["bval"], s["bvec"])
    np.testing.assert_allclose(dwi.bvecs, array_frame, atol=1e-7)


def test_flip_is_an_involution():
    v = np.random.default_rng(1).normal(size=(5, 3))
    aff = np.eye(4)
    np.testing.assert_array_equal(flip_for_fsl(flip_for_fsl(v, aff), aff), v)


def test_nx3_bvecs_accepted_with_a_note(scan, caplog):
    s = scan()
    s["bvec"].write_text("\n".join(" ".join(f"{v:.6f}" for v in row) for row in s["bvecs"]) + "\n")
    with caplog.at_level(logging.INFO, logger="difftract"):
        dwi = load_dwi(s["dwi"], s["bval"], s["bvec"])
    assert "N x 3" in caplog.text and "dwi.bvec" in caplog.text
    np.testing.assert_allclose(dwi.bvecs, s["bvecs"] * [-1, 1, 1], atol=1e-6)  # det > 0: FSL x flipped


def test_non_unit_bvecs_are_normalised_with_a_warning(scan):
    s = scan()
    scaled = s["bvecs"] * 1.5
    s["bvec"].write_text("\n".join(" ".join(f"{v:.6f}" for v in row) for row in scaled.T) + "\n")
    with pytest.warns(DifftractWarning, match="normalised 6 non-unit"):
        dwi = load_dwi(s["dwi"], s["bval"], s["bvec"])
    np.testing.assert_allclose(np.linalg.norm(dwi.bvecs[1:], axis=1), 1.0, atol=1e-9)


def test_subject_directory(scan):
    s = scan()
    dwi = load_subject(s["tmp"])
    assert dwi.mask is not None and dwi.files["dwi"].name == "dwi.nii.gz"
    with pytest.raises(InputError, match="subject directory not found"):
        load_subject(s["tmp"] / "nope")
    hcp = s["tmp"] / "hcp"
    hcp.mkdir()
    with pytest.raises(InputError, match="no diffusion scan found.*data.nii.gz, bvals, bvecs"):
        load_subject(hcp)
    for src, dst in (("dwi", "data.nii.gz"), ("bval", "bvals"), ("bvec", "bvecs")):
        (hcp / dst).write_bytes(s[src].read_bytes())
    dwi = load_subject(hcp)                                       # HCP names, no nodif_brain_mask.nii.gz
    assert dwi.mask is None and dwi.files["dwi"].name == "data.nii.gz"


def _write_vec(path, rows):
    path.write_text("\n".join(" ".join(str(v) for v in r) for r in rows) + "\n")


BAD_CASES = {
    "dwi_3d": ("dwi", "must be 4D"),
    "bval_count": ("bval", "bval has 6 values but the DWI has 7 volumes"),
    "bvec_count": ("bvec", "bvec has 6 directions but the DWI has 7 volumes"),
    "bvec_rows": ("bvec", "bvec must have 3 rows"),
    "bval_text": ("bval", "non-numeric value 'abc'"),
    "bval_empty": ("bval", "bval file is empty"),
    "bval_negative": ("bval", "negative value"),
    "bval_nan": ("bval", "NaN or Inf"),
    "bval_ragged": ("bval", "rows have different lengths"),
    "no_b0": ("bval", "no b0 volume"),
    "zero_dir": ("bvec", "zero gradient direction"),
    "dwi_missing": ("dwi", "DWI file not found"),
    "bval_missing": ("bval", "bval file not found"),
    "dwi_garbage": ("dwi", "cannot read DWI as NIfTI"),
    "dwi_truncated": ("dwi", "truncated or corrupt"),
    "dwi_nan": ("dwi", "contains 2 NaN/Inf value(s) in 2 voxel(s)"),
    "dwi_dir": ("dwi", "is a directory"),
    "dwi_complex": ("dwi", "complex values"),
    "dwi_short_nii": ("dwi", "header promises"),
    "mask_4d": ("mask", "mask must be 3D"),
    "mask_shape": ("mask", "mask shape (4, 5, 2) differs from the DWI grid (4, 5, 3)"),
    "mask_affine": ("mask", "mask affine differs from the DWI affine"),
    "mask_empty": ("mask", "mask is empty"),
}


def _break(case, s):
    aff = s["affine"]
    if case == "dwi_3d":
        nib.save(nib.Nifti1Image(s["data"][..., 0], aff), s["dwi"])
    elif case == "bval_count":
        s["bval"].write_text(" ".join(f"{b:g}" for b in s["bvals"][:-1]))
    elif case == "bvec_count":
        _write_vec(s["bvec"], s["bvecs"][:-1].T)
    elif case == "bvec_rows":
        _write_vec(s["bvec"], np.vstack([s["bvecs"].T, s["bvecs"][:, :1].T]))
    elif case == "bval_text":
        s["bval"].write_text("0 1000 abc 1000 1000 1000 1000")
    elif case == "bval_empty":
        s["bval"].write_text("\n")
    elif case == "bval_negative":
        s["bval"].write_text("0 1000 -5 1000 1000 1000 1000")
    elif case == "bval_nan":
        s["bval"].write_text("0 1000 nan 1000 1000 1000 1000")
    elif case == "bval_ragged":
        s["bval"].write_text("0 1000 1000\n1000 1000 1000 1000")
    elif case == "no_b0":
        s["bval"].write_text(" ".join(["1000"] * 7))
        _write_vec(s["bvec"], np.vstack([[1, 0, 0], s["bvecs"][1:]]).T)
    elif case == "zero_dir":
        _write_vec(s["bvec"], np.vstack([s["bvecs"][:3], [0, 0, 0], s["bvecs"][4:]]).T)
    elif case == "dwi_missing":
        s["dwi"].unlink()
    elif case == "bval_missing":
        s["bval"].unlink()
    elif case == "dwi_garbage":
        s["dwi"].write_bytes(gzip.compress(b"this is not a nifti file at all" * 20))
    elif case == "dwi_truncated":
        raw = s["dwi"].read_bytes()
        s["dwi"].write_bytes(raw[: len(raw) // 2])
    elif case == "dwi_nan":
        data = s["data"].copy()
        data[0, 0, 0, 1] = np.nan
        data[1, 0, 0, 2] = np.inf
        nib.save(nib.Nifti1Image(data, aff), s["dwi"])
    elif case == "dwi_dir":
        s["dwi"].unlink()
        s["dwi"].mkdir()
    elif case == "dwi_complex":
        nib.save(nib.Nifti1Image(s["data"].astype(np.complex64), aff), s["dwi"])
    elif case == "dwi_short_nii":  # an uncompressed file cut short: refused before reading
        img = nib.Nifti1Image(s["data"], aff)
        s["dwi"] = s["dwi"].with_name("dwi.nii")
        nib.save(img, s["dwi"])
        s["dwi"].write_bytes(s["dwi"].read_bytes()[:400])
    elif case == "mask_4d":
        nib.save(nib.Nifti1Image(np.ones((4, 5, 3, 2), np.uint8), aff), s["mask"])
    elif case == "mask_shape":
        nib.save(nib.Nifti1Image(np.ones((4, 5, 2), np.uint8), aff), s["mask"])
    elif case == "mask_affine":
        other = aff.copy()
        other[0, 3] += 1.0
        nib.save(nib.Nifti1Image(np.ones((4, 5, 3), np.uint8), other), s["mask"])
    elif case == "mask_empty":
        nib.save(nib.Nifti1Image(np.zeros((4, 5, 3), np.uint8), aff), s["mask"])


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_names_file_and_problem(scan, case):
    s = scan()
    which, message = BAD_CASES[case]
    _break(case, s)
    with pytest.raises(InputError) as info:
        load_dwi(s["dwi"], s["bval"], s["bvec"], s["mask"])
    assert str(info.value).startswith(str(s[which]))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_nonfinite_zeroed_on_request(scan):
    s = scan()
    _break("dwi_nan", s)
    with pytest.warns(DifftractWarning, match="set 2 NaN/Inf"):
        dwi = load_dwi(s["dwi"], s["bval"], s["bvec"], zero_nonfinite=True)
    assert np.isfinite(dwi.data).all() and dwi.data[0, 0, 0, 1] == 0


def test_singleton_4d_mask_and_nonbinary_mask_accepted(scan, caplog):
    s = scan()
    m = np.zeros((4, 5, 3, 1), np.float32)
    m[1, 1, 1, 0] = 0.7
    nib.save(nib.Nifti1Image(m, s["affine"]), s["mask"])
    with caplog.at_level(logging.INFO, logger="difftract"):
        dwi = load_dwi(s["dwi"], s["bval"], s["bvec"], s["mask"])
    assert dwi.mask.sum() == 1 and "not binary" in caplog.text
