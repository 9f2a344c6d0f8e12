"""The command line end to end: happy paths, refusals and bad inputs.

Most calls run ``main()`` in-process (the ``cli`` fixture); the demo, the refusal of an
existing output and one bad parameter go through the installed console script (``cli_script``).
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest


def test_help_describes_commands(cli):
    out = cli("--help")
    assert out.returncode == 0 and "simulate" in out.stdout and "check" in out.stdout
    sim = cli("simulate", "--help")
    assert sim.returncode == 0 and "gt/scoring.json" in sim.stdout and "example" in sim.stdout
    for command in (["check"], ["run"], ["fit", "dti"], ["fit", "sh"], ["fit", "csd"], ["track"], ["score"],
                    ["train", "qcgdti"], ["train", "ddtracking"], ["demo"]):
        text = cli(*command, "--help").stdout
        assert "example" in text and "usage: difftract " + " ".join(command) in text, command
    run = cli("run", "--help").stdout
    assert "report.html" in run and "nodif_brain_mask.nii.gz" in run and "default: det" in run


def test_simulate_crossing_happy_path_and_determinism(cli, tmp_path):
    args = ["--preset", "crossing", "--streamlines-per-bundle", "10", "--ndirs", "12", "--seed", "3"]
    first = cli("simulate", tmp_path / "a", *args)
    assert first.returncode == 0, first.stderr
    assert "bundle1" in first.stdout and "written to" in first.stdout
    assert cli("simulate", tmp_path / "b", *args).returncode == 0
    a = nib.load(tmp_path / "a" / "dwi.nii.gz").get_fdata()
    b = nib.load(tmp_path / "b" / "dwi.nii.gz").get_fdata()
    np.testing.assert_array_equal(a, b)
    assert json.loads((tmp_path / "a" / "dwi.json").read_text())["seed"] == 3
    ok = cli("check", tmp_path / "a" / "dwi.nii.gz", tmp_path / "a" / "dwi.bval", tmp_path / "a" / "dwi.bvec",
             "--mask", tmp_path / "a" / "mask.nii.gz")
    assert ok.returncode == 0 and "volumes=14" in ok.stdout


def test_simulate_with_a_given_multishell_scheme(cli, tmp_path):
    (tmp_path / "s.bval").write_text("0 1000 1000 1000 2000 2000 2000 2000\n")
    dirs = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 1], [1, 1, 1]], float)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    vec = np.vstack([[0, 0, 0], dirs]).T
    (tmp_path / "s.bvec").write_text("\n".join(" ".join(f"{v:.6f}" for v in r) for r in vec))
    out = cli("simulate", tmp_path / "p", "--preset", "crossing", "--streamlines-per-bundle", "5",
              "--scheme", tmp_path / "s.bval", tmp_path / "s.bvec")
    assert out.returncode == 0, out.stderr
    np.testing.assert_allclose(np.loadtxt(tmp_path / "p" / "dwi.bvec"), vec, atol=1e-6)  # same FSL file back
    assert "[1000, 2000]" in out.stdout


def test_simulate_randomize_records_the_draw_and_refuses_fixed_schemes(cli, tmp_path):
    args = ["--preset", "crossing", "--streamlines-per-bundle", "5", "--supersample", "2", "--seed", "5", "--randomize"]
    out = cli("simulate", tmp_path / "r", *args)
    assert out.returncode == 0, out.stderr
    assert "randomized:" in out.stdout
    record = json.loads((tmp_path / "r" / "dwi.json").read_text())
    drawn = record["summary"]["randomized"]
    assert record["params"]["randomize"] is True and len(drawn["tissue"]["bundles"]) == 2
    bvals = np.loadtxt(tmp_path / "r" / "dwi.bval")
    assert len(bvals) == drawn["acquisition"]["nb0"] + sum(drawn["acquisition"]["ndirs"])
    assert cli("simulate", tmp_path / "again", *args).returncode == 0
    np.testing.assert_array_equal(nib.load(tmp_path / "r" / "dwi.nii.gz").get_fdata(),
                                  nib.load(tmp_path / "again" / "dwi.nii.gz").get_fdata())
    _assert_refused(cli("simulate", tmp_path / "p", *args, "--bvals", "1000", "--snr", "30"), "--bvals", "--snr")
    assert not (tmp_path / "p").exists()


def _assert_refused(out, *words):
    assert out.returncode == 2, (out.returncode, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("difftract: error: "), out.stderr
    for w in words:
        assert str(w) in lines[0]


def test_existing_output_is_refused_then_forced(cli, cli_script, tmp_path):
    args = ["--preset", "crossing", "--streamlines-per-bundle", "5", "--ndirs", "6"]
    assert cli("simulate", tmp_path / "p", *args).returncode == 0
    stamp = (tmp_path / "p" / "dwi.nii.gz").stat().st_mtime_ns
    _assert_refused(cli_script("simulate", tmp_path / "p", *args), tmp_path / "p", "--force")   # as a shell sees it
    assert (tmp_path / "p" / "dwi.nii.gz").stat().st_mtime_ns == stamp
    assert cli("simulate", tmp_path / "p", *args, "--force").returncode == 0


def test_bad_scheme_files_fail_cleanly_and_write_nothing(cli, tmp_path):
    (tmp_path / "s.bval").write_text("0 1000 1000\n")
    (tmp_path / "s.bvec").write_text("0 1 0 0\n0 0 1 0\n0 0 0 1\n")
    out = cli("simulate", tmp_path / "p", "--preset", "crossing", "--scheme", tmp_path / "s.bval", tmp_path / "s.bvec")
    _assert_refused(out, "s.bvec", "4 directions", "3 volumes")
    (tmp_path / "s.bval").write_text("0 1000 x\n")
    _assert_refused(cli("simulate", tmp_path / "p", "--scheme", tmp_path / "s.bval", tmp_path / "s.bvec"),
                    "s.bval", "non-numeric")
    _assert_refused(cli("simulate", tmp_path / "p", "--preset", "crossing", "--ndirs", "10,20"), "--ndirs")
    _assert_refused(cli("simulate", tmp_path / "p", "--preset", "crossing", "--angles", "0"), "angles")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.bval", "s.bvec"]


@pytest.mark.parametrize("problem,words", [
    ("missing", ["dwi.nii.gz", "not found"]),
    ("bval_count", ["dwi.bval", "values but the DWI has"]),
    ("mask_grid", ["mask.nii.gz", "differs from the DWI grid"]),
    ("nan", ["dwi.nii.gz", "NaN/Inf"]),
])
def test_check_reports_bad_inputs_in_one_line(cli, scan, problem, words):
    s = scan()
    if problem == "missing":
        s["dwi"].unlink()
    elif problem == "bval_count":
        s["bval"].write_text("0 1000 1000")
    elif problem == "mask_grid":
        nib.save(nib.Nifti1Image(np.ones((3, 3, 3), np.uint8), s["affine"]), s["mask"])
    elif problem == "nan":
        data = s["data"].copy()
        data[0, 0, 0, 0] = np.nan
        nib.save(nib.Nifti1Image(data, s["affine"]), s["dwi"])
    out = cli("check", s["dwi"], s["bval"], s["bvec"], "--mask", s["mask"])
    _assert_refused(out, *words)
    if problem == "nan":
        fixed = cli("check", s["dwi"], s["bval"], s["bvec"], "--zero-nonfinite")
        assert fixed.returncode == 0 and "warning" in fixed.stderr


def test_demo_writes_the_phantom_and_its_picture(cli_script, tmp_path):
    cli = cli_script                                  # through the installed console script
    out = cli("demo", "--out", tmp_path / "demo")
    assert out.returncode == 0, out.stderr
    demo = tmp_path / "demo"
    assert (demo / "phantom" / "qc_phantom.png").is_file()
    assert "horizontal" in out.stdout and "QC pictures" in out.stdout
    for made in ("dti/fa.nii.gz", "dti/qc_dti.png", "fod.nii.gz", "peaks.nii.gz", "fod_qc.png", "fod.json",
                 "tracks_det.trx", "tracks_det.json", "scores_det.json", "scores_gt.json",
                 "tracks_ddtracking.trx", "scores_ddtracking.json", "report.html", "report_bundles.png",
                 "report_tracks_det.png", "report_tracks_ddtracking.png"):
        assert (demo / made).is_file(), made
    assert "$ difftract fit dti" in out.stdout and "$ difftract fit csd" in out.stdout
    assert f"report: {demo / 'report.html'}" in out.stdout and ".partial" not in out.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]                   # the staging folder is gone
    assert "$ difftract track" in out.stdout and "det:" in out.stdout
    assert json.loads((demo / "scores_det.json").read_text())["VB"] == 7
    assert "ddtracking:" in out.stdout
    dd = json.loads((demo / "scores_ddtracking.json").read_text())
    assert dd["VB"] == 7 and dd["VS_ratio"] > 0.7          # the shipped model on the default phantom


@pytest.mark.parametrize("bad", [
    ["--preset", "random", "--n-bundles", "0"], ["--streamlines-per-bundle", "0"], ["--step-mm", "nan"],
    ["--bvals", "inf"], ["--bvals", ","], ["--seed", "-1"], ["--ndirs", "100000"], ["--snr", "nan"],
    ["--snr", "-5"], ["--nb0", "0"], ["--supersample", "0"], ["--voxel-size", "0"],
    ["--voxel-size", "5", "--preset", "brain"], ["--voxel-size", "1", "--preset", "fibercup"],
])
def test_bad_parameters_refused_in_one_line(cli, cli_script, tmp_path, bad):
    argv = ["simulate", str(tmp_path / "p"), "--preset", "crossing", *bad]
    run = cli_script if bad[0] == "--preset" else cli     # one through the console script, the rest in-process
    _assert_refused(run(*argv))
    assert list(tmp_path.iterdir()) == []


def test_output_under_a_file_and_scheme_without_b0_refused(cli, tmp_path):
    (tmp_path / "afile").write_text("x")
    _assert_refused(cli("simulate", tmp_path / "afile" / "out", "--preset", "crossing"), "is a file")
    (tmp_path / "s.bval").write_text("1000 1000 1000 1000 1000 1000\n")
    (tmp_path / "s.bvec").write_text("1 0 0 1 0 1\n0 1 0 1 1 0\n0 0 1 0 1 1\n")
    _assert_refused(cli("simulate", tmp_path / "p", "--scheme", tmp_path / "s.bval", tmp_path / "s.bvec"),
                    "s.bval", "no b0")
    assert not (tmp_path / "p").exists()
