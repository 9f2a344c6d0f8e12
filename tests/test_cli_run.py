"""``difftract run``: the main job on a small phantom, both subject layouts, and refusals that leave nothing."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from difftract.phantom import PhantomConfig, save_phantom, simulate


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    ph = simulate(PhantomConfig(preset="crossing", seed=1, streamlines_per_bundle=40))
    return save_phantom(ph, tmp_path_factory.mktemp("run") / "xing")


def _leftovers(parent):
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def test_run_det_writes_tractogram_maps_scores_and_report(cli, subject, tmp_path):
    out = tmp_path / "out"
    res = cli("run", subject, "--out", out, "--method", "det", "--format", "tck")
    assert res.returncode == 0, res.stderr
    for made in ("dti/fa.nii.gz", "dti/rgb.nii.gz", "fod.nii.gz", "tracks.tck", "tracks.json", "scores.json",
                 "report.html", "report_colour_fa.png", "report_tracks_det.png", "report_bundles.png"):
        assert (out / made).is_file(), made
    assert not (out / "stop_mask.nii.gz").exists()                 # the phantom's wm.nii.gz was used
    assert not (out / "sh.nii.gz").exists()                        # det tracks the fODF
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith("run det: ") and "streamlines, mean length" in last and str(out / "report.html") in last
    assert json.loads((out / "scores.json").read_text())["VB"] == 2
    assert "<td>det</td>" in (out / "report.html").read_text() and _leftovers(tmp_path) == []
    page = (out / "report.html").read_text()                       # tractometry: profiles per ground-truth bundle
    assert "<h2>Tractometry</h2>" in page and (out / "report_profiles.png").is_file()
    rows = list(csv.DictReader((out / "profiles.csv").open()))
    assert len(rows) == 2 * 20 and {r["bundle"] for r in rows} == {"bundle1", "bundle2"}
    assert all(0 < float(r["fa"]) < 1 and float(r["gt_fa"]) > 0 for r in rows)
    assert (out / "profiles.csv.json").is_file()

    again = cli("run", subject, "--out", out, "--method", "det")
    assert again.returncode == 2 and "--force" in again.stderr
    before = sorted(p.name for p in out.iterdir())
    forced = cli("-q", "run", subject, "--out", out, "--method", "det", "--force")
    assert forced.returncode == 0, forced.stderr
    assert sorted(p.name for p in out.iterdir()) != before         # replaced whole: trx now, tck gone
    assert (out / "tracks.trx").is_file() and not (out / "tracks.tck").exists() and _leftovers(tmp_path) == []


def test_hcp_layout_without_white_matter_tracks_above_an_fa_threshold(cli, subject, tmp_path):
    hcp = tmp_path / "100307"
    hcp.mkdir()
    for src, dst in (("dwi.nii.gz", "data.nii.gz"), ("dwi.bval", "bvals"), ("dwi.bvec", "bvecs"),
                     ("mask.nii.gz", "nodif_brain_mask.nii.gz")):
        shutil.copy(subject / src, hcp / dst)
    out = tmp_path / "out"
    res = cli("-q", "run", hcp, "--out", out, "--method", "det", "--fa-threshold", "0.3")
    assert res.returncode == 0, res.stderr
    assert (out / "stop_mask.nii.gz").is_file() and (out / "tracks.trx").is_file()
    assert not (out / "scores.json").exists()                      # no ground truth: no scores, no bars
    assert not (out / "report_bundles.png").exists() and (out / "report.html").is_file()


def test_refusals_and_failures_leave_nothing(cli, cli_script, subject, tmp_path):
    out = tmp_path / "out"
    missing = cli_script("run", tmp_path / "nope", "--out", out)
    assert missing.returncode == 2 and "subject directory not found" in missing.stderr
    weights = cli("run", subject, "--out", out, "--method", "det", "--weights", subject / "dwi.bval")
    assert weights.returncode == 2 and "--weights and --model apply only" in weights.stderr
    (tmp_path / "bad.pt").write_text("not weights")
    late = cli("run", subject, "--out", out, "--method", "ddtracking", "--weights", tmp_path / "bad.pt")   # refused before the fits
    assert late.returncode == 2 and "bad.pt" in late.stderr
    broken = tmp_path / "broken"
    shutil.copytree(subject, broken)
    (broken / "dwi.bval").write_text("0 1000\n")
    bvals = cli("run", broken, "--out", out)
    assert bvals.returncode == 2 and "dwi.bval" in bvals.stderr
    assert not out.exists() and _leftovers(tmp_path) == []
