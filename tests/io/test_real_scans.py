"""The three small real acquisitions DIPY ships in its wheel, tried as a new user would.

``small_64D`` (64 directions around b=1000 that scatter 987-1003, ``nan nan nan`` on the
b0, bvec written N x 3), ``small_101D`` (a q-space, DSI-like scheme: 101 directions over
b=310-4065, no shell with more than 15 directions) and ``small_25`` (25 directions at
b=2000, a slab two voxels thick). Nothing is downloaded: they install with DIPY.

Each command either runs or refuses with exit 2 and one stderr line that says what to do.
"""

from __future__ import annotations

import shutil
import warnings

import nibabel as nib
import numpy as np
import pytest
from dipy.core.gradients import gradient_table

from difftract.errors import ConfigError, InputError
from difftract.io import load_dwi
from difftract.reconst.sh import (SHELL_TOLERANCE, distinct_directions, min_directions, select_shell,
                                  shell_groups, shells, well_sampled_shell)

SCANS = ("small_64D", "small_101D", "small_25")


def _fnames(name):
    from dipy.data import get_fnames

    return get_fnames(name=name)


@pytest.fixture(scope="module")
def subjects(tmp_path_factory):
    """Per scan: a subject directory (dwi.nii.gz, dwi.bval, dwi.bvec, mask.nii.gz) and the original files.

    The mask is the b0 above a fifth of its 99th percentile: these scans come without one.
    """
    root = tmp_path_factory.mktemp("real_scans")
    out = {}
    for name in SCANS:
        dwi, bval, bvec = _fnames(name)
        sub = root / name
        sub.mkdir()
        img = nib.load(dwi)
        data = np.asanyarray(img.dataobj)
        nib.save(nib.Nifti1Image(data, img.affine, img.header), sub / "dwi.nii.gz")   # small_64D is a .nii
        shutil.copy(bval, sub / "dwi.bval")
        shutil.copy(bvec, sub / "dwi.bvec")
        b = np.loadtxt(bval).ravel()
        b0 = data[..., b <= 50].mean(axis=-1)
        mask = (b0 > 0.2 * np.percentile(b0, 99)).astype(np.uint8)
        nib.save(nib.Nifti1Image(mask, img.affine), sub / "mask.nii.gz")
        out[name] = {"dir": sub, "scan": [dwi, bval, bvec, "--mask", sub / "mask.nii.gz"], "files": (dwi, bval, bvec)}
    return out


def _ok(res):
    assert res.returncode == 0, res.stderr
    assert "error" not in res.stderr


def _refused(res, *words):
    assert res.returncode == 2, (res.returncode, res.stderr)
    lines = [line for line in res.stderr.strip().splitlines() if not line.startswith(("difftract: note:", "difftract: warning:"))]
    assert len(lines) == 1 and lines[0].startswith("difftract: error: "), res.stderr
    for w in words:
        assert str(w) in lines[0], (w, lines[0])
    return lines[0]


CSD_101D = ("CSD at lmax 8 needs one shell with at least 23 distinct directions", "b=4000 (3935-4065), has 12",
            "b=2774 (2725-2835): 15", "q-space", "--lmax 6 --shell 2774")


# ---------------------------------------------------------------- check / fit dti / fit csd / track / run

@pytest.mark.parametrize("name", SCANS)
def test_check_and_fit_dti_run_on_every_scan(cli, subjects, tmp_path, name):
    s = subjects[name]
    res = cli("check", *s["scan"])
    _ok(res)
    assert "DWI(" in res.stdout
    res = cli("fit", "dti", *s["scan"], "--out-dir", tmp_path / "dti")
    _ok(res)
    fa = nib.load(tmp_path / "dti" / "fa.nii.gz").get_fdata()
    assert np.isfinite(fa).all() and fa.max() > 0.2


def test_small_64d_nan_b0_direction_is_accepted_with_a_note(cli, subjects):
    res = cli("check", *subjects["small_64D"]["scan"])
    _ok(res)
    assert "NaN direction" in res.stderr and "set to 0" in res.stderr
    assert "b=994 (987-1003): 64" in res.stdout                  # b-values 987..1003: one shell
    dwi = load_dwi(*subjects["small_64D"]["files"])
    assert np.all(dwi.bvecs[0] == 0) and np.isfinite(dwi.bvecs).all()


@pytest.mark.parametrize("name", ["small_64D", "small_25"])
def test_fit_csd_and_track_run_on_the_shell_scans(cli, subjects, tmp_path, name):
    s = subjects[name]
    _ok(cli("fit", "csd", *s["scan"], "--out", tmp_path / "fod.nii.gz"))
    fod = nib.load(tmp_path / "fod.nii.gz").get_fdata()
    assert fod.shape[-1] == 45 and np.isfinite(fod).all() and fod[..., 0].max() > 0
    res = cli("track", *s["scan"], "--sh", tmp_path / "fod.nii.gz", "--min-len-mm", "5", "--out", tmp_path / "t.trx")
    _ok(res)
    assert (tmp_path / "t.trx").exists() and "streamlines" in res.stdout


def test_small_101d_csd_refused_with_what_it_needs(cli, subjects, tmp_path):
    s = subjects["small_101D"]
    _refused(cli("fit", "csd", *s["scan"], "--out", tmp_path / "fod.nii.gz"), *CSD_101D)
    assert not (tmp_path / "fod.nii.gz").exists()
    _refused(cli("track", *s["scan"], "--out", tmp_path / "t.trx"), *CSD_101D)
    assert not (tmp_path / "t.trx").exists()
    # the suggestion given works
    _ok(cli("fit", "csd", *s["scan"], "--out", tmp_path / "fod6.nii.gz", "--lmax", "6", "--shell", "2774"))
    assert nib.load(tmp_path / "fod6.nii.gz").shape[-1] == 28
    # a shell asked for by hand that has too few directions: said so, with a shell that would do
    _refused(cli("fit", "csd", *s["scan"], "--out", tmp_path / "f.nii.gz", "--lmax", "6", "--shell", "1000"),
             "the shell fitted, b=922 (900-945), has 4", "--shell 2774")


def test_small_101d_ddtracking_refused_with_what_it_needs(cli, subjects, tmp_path):
    s = subjects["small_101D"]
    _refused(cli("track", *s["scan"], "--method", "ddtracking", "--out", tmp_path / "t.trx"),
             "an SH fit at lmax 6 needs one shell with at least 15 distinct directions", "b=922 (900-945), has 4")


@pytest.mark.parametrize("name", SCANS)
def test_run_on_a_subject_directory(cli, subjects, tmp_path, name):
    out = tmp_path / "out"
    res = cli("-q", "run", subjects[name]["dir"], "--out", out, "--method", "det", "--min-len-mm", "5")
    if name == "small_101D":
        _refused(res, *CSD_101D)
        assert not out.exists()
    else:
        _ok(res)
        assert (out / "tracks.trx").exists() and (out / "report.html").exists()
        # these scans are 2-4 voxels thick: 20 mm streamlines do not fit, and run says what to lower
        _refused(cli("-q", "run", subjects[name]["dir"], "--out", tmp_path / "long", "--method", "det"),
                 "no streamline", "--min-len-mm")


def test_run_with_ddtracking_refuses_small_101d(cli, subjects, tmp_path):
    res = cli("-q", "run", subjects["small_101D"]["dir"], "--out", tmp_path / "out", "--method", "ddtracking")
    _refused(res, "an SH fit at lmax 6 needs one shell with at least 15 distinct directions", "b=2774")


# ---------------------------------------------------------------- NaN b-vectors: b0 only

def test_nan_bvec_on_a_dw_volume_stays_an_error(subjects, tmp_path):
    dwi, bval, bvec = subjects["small_64D"]["files"]
    rows = bvec.read_text().splitlines()
    rows[5] = "nan nan nan"
    bad = tmp_path / "bad.bvec"
    bad.write_text("\n".join(rows) + "\n")
    with pytest.raises(InputError) as info:
        load_dwi(dwi, bval, bad)
    message = str(info.value)
    assert message.startswith(str(bad)) and "NaN on 1 diffusion-weighted volume(s) (first: volume 5" in message


def test_inf_bvec_is_an_error_even_on_a_b0(subjects, tmp_path):
    dwi, bval, bvec = subjects["small_64D"]["files"]
    rows = bvec.read_text().splitlines()
    rows[0] = "inf 0 0"
    bad = tmp_path / "bad.bvec"
    bad.write_text("\n".join(rows) + "\n")
    with pytest.raises(InputError, match="bvec contains Inf"):
        load_dwi(dwi, bval, bad)


# ---------------------------------------------------------------- shells

def test_scattered_bvalues_form_one_shell_each():
    bvals = np.r_[0, 5, 995, 1000, 1005, 990, 2010, 1995, 2000, 2040, 3000]
    groups = shell_groups(bvals)
    assert [g.bval for g in groups] == [998, 2011, 3000]
    assert sorted(np.concatenate([g.indices for g in groups]).tolist()) == list(range(2, 11))
    np.testing.assert_array_equal(shells(bvals), [998, 2011, 3000])
    gtab = gradient_table(bvals, bvecs=np.r_[[[0, 0, 0]] * 2, np.eye(3)[np.arange(9) % 3]])
    np.testing.assert_array_equal(select_shell(gtab, 1000), [2, 3, 4, 5])
    np.testing.assert_array_equal(select_shell(gtab, 2000), [6, 7, 8, 9])
    with pytest.raises(ConfigError, match="no volumes with b = 1500"):
        select_shell(gtab, 1500)


def test_real_schemes_group_every_volume_once():
    for name, expected in (("small_64D", [994]), ("small_25", [2000])):
        assert shells(np.loadtxt(_fnames(name)[1]).ravel()).tolist() == expected
    b = np.loadtxt(_fnames("small_101D")[1]).ravel()
    groups = shell_groups(b)
    assert len(groups) == 13 and sum(len(g.indices) for g in groups) == 101
    for g in groups:      # each group is separated from the next by more than the tolerance
        assert g.high - g.low <= 130
    assert all(b.low - a.high > SHELL_TOLERANCE for a, b in zip(groups, groups[1:]))


def test_direction_counts():
    assert [min_directions(l) for l in (2, 4, 6, 8, 10)] == [6, 15, 15, 23, 33]
    v = np.eye(3)
    assert distinct_directions(np.r_[v, -v, v]) == 3


def test_no_dipy_overlap_warning_on_a_dsi_scheme(subjects):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        shell_groups(np.loadtxt(_fnames("small_101D")[1]).ravel())


def test_the_well_sampled_shell_is_the_highest_with_enough_directions():
    from dipy.core.gradients import gradient_table
    from dipy.core.sphere import HemiSphere, disperse_charges

    def scheme(*shells):
        bvals, bvecs = [0.0], [np.zeros(3)]
        rng = np.random.default_rng(0)
        for b, n in shells:
            theta, phi = np.arccos(rng.uniform(-1, 1, n)), rng.uniform(0, 2 * np.pi, n)
            points, _ = disperse_charges(HemiSphere(theta=theta, phi=phi), 200)
            bvals += [b] * n
            bvecs += list(points.vertices)
        return gradient_table(np.asarray(bvals), bvecs=np.asarray(bvecs))

    assert well_sampled_shell(scheme((1000, 64))) == (1000.0, 8)
    assert well_sampled_shell(scheme((1000, 64), (3000, 20))) == (3000.0, 6)     # the highest, at what it allows
    assert well_sampled_shell(scheme((1000, 30), (3000, 12))) == (1000.0, 8)     # too sparse for lmax 6: the next
    assert well_sampled_shell(scheme((1000, 64)), up_to=6) == (1000.0, 6)
    assert well_sampled_shell(scheme((1000, 10))) is None
