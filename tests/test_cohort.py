"""``difftract cohort``: small phantoms on a 2-worker Dask cluster, one broken, then a rerun that skips.

The cohort runs on worker processes, which import difftract as this process does (their
``sys.path`` is this one's). The subjects are 90-degree crossings with 20 streamlines a bundle,
tracked with det (CSD lmax 4), so each takes a few seconds.
"""

from __future__ import annotations

import csv
import json
import os
import shutil

import pytest

from difftract.errors import ConfigError, InputError
from difftract.phantom import PhantomConfig, save_phantom, simulate
from difftract.pipeline import RunOptions
from difftract.pipeline.cohort import find_subjects, run_cohort

FAST = ("--method", "det", "--lmax", "4", "--min-len-mm", "10")
OPTIONS = RunOptions(methods=("det",), lmax=4, min_len_mm=10)


@pytest.fixture(scope="module")
def subjects(tmp_path_factory):
    """Three phantoms and a fourth whose bval file has one value too few."""
    root = tmp_path_factory.mktemp("cohort") / "subjects"
    for k in range(3):
        save_phantom(simulate(PhantomConfig(preset="crossing", seed=k, streamlines_per_bundle=20)), root / f"sub-{k}")
    shutil.copytree(root / "sub-0", root / "sub-broken")
    bval = root / "sub-broken" / "dwi.bval"
    bval.write_text(" ".join(bval.read_text().split()[:-1]) + "\n")
    return root


@pytest.fixture(scope="module")
def first_run(subjects, cli):
    out = subjects.parent / "out"
    return out, cli("cohort", subjects, "--out", out, "--workers", "2", *FAST)


def _rows(out):
    with (out / "cohort.csv").open() as f:
        return {r["name"]: r for r in csv.DictReader(f)}


def _mtimes(folder):
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_a_broken_subject_is_reported_and_the_others_finish(first_run):
    out, res = first_run
    assert res.returncode == 2, res.stderr
    rows = _rows(out)
    assert sorted(rows) == ["sub-0", "sub-1", "sub-2", "sub-broken"]
    for name in ("sub-0", "sub-1", "sub-2"):
        row = rows[name]
        assert row["status"] == "done" and row["error"] == "", row
        assert int(row["streamlines"]) > 100 and 0.5 < float(row["F1"]) <= 1 and row["VB"] == "2"
        assert float(row["seconds"]) > 0 and 0.05 < float(row["peak_rss_gb"]) < 8 and row["torch_threads"] == "1"
        assert (out / name / "report.html").is_file() and (out / name / "tracks.trx").is_file()
        assert "$ difftract track" in (out / "logs" / f"{name}.log").read_text()
    broken = rows["sub-broken"]
    assert broken["status"] == "failed" and broken["streamlines"] == ""
    assert broken["error"].startswith("InputError: ") and "sub-broken/dwi.bval" in broken["error"]
    assert "33 values" in broken["error"] and "\n" not in broken["error"]
    assert not (out / "sub-broken").exists() and not [p for p in out.iterdir() if p.name.startswith(".")]
    assert f"sub-broken: {broken['error']}" in res.stderr
    page = (out / "cohort.html").read_text()
    assert 'href="sub-1/report.html"' in page and 'src="sub-1/report_tracks_det.png"' in page
    assert "33 values" in page
    record = json.loads((out / "cohort.json").read_text())
    assert record["counts"] == {"done": 3, "failed": 1} and record["workers"] == 2
    assert [r["name"] for r in record["subjects"]] == sorted(rows)


def test_a_rerun_skips_the_finished_subjects_and_recomputes_nothing(first_run, subjects):
    from distributed import Client, LocalCluster

    out, _ = first_run
    before = {name: _mtimes(out / name) for name in ("sub-0", "sub-1", "sub-2")}
    first = _rows(out)
    # the rerun goes through a client the caller made, as on a SLURM cluster
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        result = run_cohort(subjects, out, OPTIONS, client=client)
    assert {r["name"]: r["status"] for r in result.rows} == {"sub-0": "skipped", "sub-1": "skipped",
                                                             "sub-2": "skipped", "sub-broken": "failed"}
    assert {name: _mtimes(out / name) for name in before} == before
    rows = _rows(out)
    for name in before:       # the figures of the run that made them, read back
        for column in ("streamlines", "F1", "VC", "seconds", "peak_rss_gb", "mean_length_mm"):
            assert rows[name][column] == first[name][column], (name, column)
    assert "33 values" in rows["sub-broken"]["error"]
    # the 2 workers share this machine's cores as torch threads (the client's cluster did not say)
    assert int(rows["sub-broken"]["torch_threads"]) == max(1, len(os.sched_getaffinity(0)) // 2)


def test_two_places_to_run_are_refused_before_anything_is_written(subjects, tmp_path):
    with pytest.raises(ConfigError, match="at most one"):
        run_cohort(subjects, tmp_path / "out", OPTIONS, workers=2, scheduler="tcp://127.0.0.1:1")
    assert not (tmp_path / "out").exists()


def test_a_list_file_names_subjects_relative_to_itself(tmp_path):
    for path in ("a/100307/T1w/Diffusion", "a/100408/T1w/Diffusion", "b/sub-9"):
        (tmp_path / path).mkdir(parents=True)
    listing = tmp_path / "subjects.txt"
    listing.write_text("# HCP\na/100307/T1w/Diffusion\n\n  a/100408/T1w/Diffusion  \n" + f"{tmp_path / 'b/sub-9'}\n")
    found = find_subjects(listing)
    assert [name for name, _ in found] == ["a_100307_T1w_Diffusion", "a_100408_T1w_Diffusion", "b_sub-9"]
    assert [folder for _, folder in found] == [tmp_path / "a/100307/T1w/Diffusion",
                                               tmp_path / "a/100408/T1w/Diffusion", tmp_path / "b/sub-9"]
    listing.write_text("b/sub-9\nb/sub-9\n")
    with pytest.raises(InputError, match="more than once"):
        find_subjects(listing)


def test_a_folder_lists_its_subfolders_but_not_the_output_nor_hidden_ones(subjects, tmp_path):
    (tmp_path / "sub-a").mkdir()
    (tmp_path / "sub-b").mkdir()
    (tmp_path / ".sub-b.partial-1-x").mkdir()
    (tmp_path / "derivatives").mkdir()
    assert [n for n, _ in find_subjects(tmp_path, out=tmp_path / "derivatives")] == ["sub-a", "sub-b"]
    with pytest.raises(ConfigError, match="one subject's folder"):
        find_subjects(subjects / "sub-0")


def test_a_bad_memory_limit_is_refused_before_anything_is_written(subjects, tmp_path):
    with pytest.raises(ConfigError, match="--memory-per-worker"):
        run_cohort(subjects, tmp_path / "out", OPTIONS, memory_per_worker="lots")
    assert not (tmp_path / "out").exists()


def test_a_list_of_finished_subjects_starts_no_cluster(first_run, subjects):
    """Runs last: it rewrites the first run's tables with the listed subjects only."""
    out, _ = first_run
    listing = subjects.parent / "finished.txt"
    listing.write_text("# the three that ran\nsubjects/sub-0\nsubjects/sub-1\n\nsubjects/sub-2\n")
    result = run_cohort(listing, out, OPTIONS, workers=2)
    assert result.workers is None and result.counts() == {"skipped": 3}
    assert sorted(_rows(out)) == ["sub-0", "sub-1", "sub-2"]


def test_subjects_finished_with_other_options_are_reported_not_reused(first_run, subjects):
    """A rerun with another seed would otherwise show the old tractograms as this run's."""
    import dataclasses

    out, _ = first_run
    listing = subjects.parent / "finished2.txt"
    listing.write_text("subjects/sub-0\nsubjects/sub-1\n")
    result = run_cohort(listing, out, dataclasses.replace(OPTIONS, seed=OPTIONS.seed + 1), workers=2)
    assert result.workers is None and result.counts() == {"failed": 2}
    assert all("other options" in r["error"] and "--force" in r["error"] for r in result.rows)


def test_a_finished_run_is_compared_with_every_option_even_one_it_predates(tmp_path):
    """A run made before --fodf-guide existed counts as unguided, which the default (the network's validated
    weight) no longer is; a guided run is not an unguided rerun's, nor the reverse."""
    from difftract.pipeline.cohort import is_complete

    def finished(name, options, drop=()):
        out = tmp_path / name
        out.mkdir()
        (out / "report.html").write_text("")
        (out / options.tracks_name(options.methods[0])).write_text("")
        params = {k: v for k, v in options.record().items() if k not in drop}
        (out / "run.json").write_text(json.dumps({"params": params}))
        return out

    plain = RunOptions(methods=("ddtracking",), fodf_guide=0.0)
    guided = RunOptions(methods=("ddtracking",), fodf_guide=0.3)
    default = RunOptions(methods=("ddtracking",)).resolved()     # as run_cohort compares: the weight made explicit
    assert default.fodf_guide == 0.3
    assert is_complete(finished("old", plain, drop=("fodf_guide",)), plain)
    with pytest.raises(ConfigError, match=r"fodf_guide 0.0, now 0.3.*--fodf-guide 0 takes runs made without"):
        is_complete(tmp_path / "old", default)
    assert is_complete(finished("default", default), guided)       # the default's weight, given explicitly
    with pytest.raises(ConfigError, match="fodf_guide 0.3"):
        is_complete(finished("guided", guided), plain)
    with pytest.raises(ConfigError, match="fodf_guide 0.0"):
        is_complete(finished("unguided", plain), guided)
    unrecorded = finished("unrecorded", plain)          # no options recorded: nothing is assumed
    (unrecorded / "run.json").write_text("{}")
    with pytest.raises(ConfigError, match="other options"):
        is_complete(unrecorded, plain)
