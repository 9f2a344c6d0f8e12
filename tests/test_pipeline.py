"""``difftract.pipeline``: the run as a library call, one read of the scan, and the stage lines it prints being true."""

from __future__ import annotations

import json
import shlex

import nibabel as nib
import numpy as np
import pytest

from difftract.io.tractogram import load_tractogram
from difftract.phantom import PhantomConfig, save_phantom, simulate
from difftract.pipeline import Console, RunOptions, Subject, run_subject


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    ph = simulate(PhantomConfig(preset="crossing", seed=3, streamlines_per_bundle=30))
    return save_phantom(ph, tmp_path_factory.mktemp("pipeline") / "xing")


def _points(path, reference):
    tract = load_tractogram(path, reference=reference)
    return [np.asarray(s) for s in tract.streamlines]


def _same(a, b):
    return len(a) == len(b) and all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def cli_run(cli, subject, tmp_path_factory):
    """One ``difftract run --method det`` of the subject, with every ``nib.load`` and pass over a DWI's volumes noted.

    Returns (out, result, loads, passes); the tests below read the one run rather than each making its own.
    """
    from difftract.io import dwi as dwi_module

    reads, passes = [], []
    real, real_volumes = nib.load, dwi_module.iter_volumes

    def counting(filename, *args, **kwargs):
        reads.append(str(filename))
        return real(filename, *args, **kwargs)

    def counting_volumes(img, path, *args, **kwargs):
        passes.append(str(path))
        return real_volumes(img, path, *args, **kwargs)

    out = tmp_path_factory.mktemp("cli_run") / "cli"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(nib, "load", counting)
        patch.setattr(dwi_module, "iter_volumes", counting_volumes)
        res = cli("run", subject, "--out", out, "--method", "det", "--seed", "4")
    return out, res, reads, passes


def test_run_reads_the_dwi_once_and_python_equals_the_cli(cli_run, subject, tmp_path):
    out, res, reads, passes = cli_run
    assert res.returncode == 0, res.stderr
    assert reads.count(str(subject / "dwi.nii.gz")) == 1, reads
    assert passes == [str(subject / "dwi.nii.gz")]                   # one pass over its volumes

    summary = run_subject(subject, tmp_path / "py", RunOptions(methods=("det",), seed=4), console=Console(quiet=True))
    reference = subject / "mask.nii.gz"
    from_cli = _points(out / "tracks.trx", reference)
    from_python = _points(summary.tracks["det"], reference)
    assert len(from_cli) > 20 and _same(from_cli, from_python)
    assert summary.streamlines["det"] == len(from_python)
    assert json.loads((tmp_path / "py" / "scores.json").read_text())["VS"] == summary.scores["det"]["VS"]


def test_the_printed_track_line_alone_reproduces_the_run(cli, cli_run, subject, tmp_path):
    out, res, _, _ = cli_run
    assert res.returncode == 0, res.stderr
    lines = [line[2:] for line in res.stdout.splitlines() if line.startswith("$ difftract ")]
    assert [shlex.split(line)[1] for line in lines] == ["fit", "fit", "track", "score"]
    assert all(str(out) in line and ".partial" not in line for line in lines)      # final paths, not staging
    track_line = shlex.split(lines[2])[1:]
    alone = tmp_path / "alone.trx"
    track_line[track_line.index("--out") + 1] = str(alone)
    again = cli(*track_line)
    assert again.returncode == 0, again.stderr
    reference = subject / "mask.nii.gz"
    assert _same(_points(out / "tracks.trx", reference), _points(alone, reference))
    record = json.loads((out / "tracks.json").read_text())
    assert record["equivalent"] == lines[2] and record["params"]["seeding"].startswith("1 random per voxel")


def test_ddtracking_run_writes_the_very_sh_it_tracked(subject, tmp_path, monkeypatch):
    from difftract.models.ddtracking import getter as dd

    tracked = []
    original = dd.DDTrackingGetter.__init__

    def spy(self, model, sh, *args, **kwargs):
        tracked.append(np.array(sh, copy=True))
        original(self, model, sh, *args, **kwargs)

    monkeypatch.setattr(dd.DDTrackingGetter, "__init__", spy)
    out = tmp_path / "dd"
    run_subject(Subject.find(subject), out, RunOptions(methods=("ddtracking",), seed=1, min_len_mm=10),
                console=Console(quiet=True))
    written = np.asarray(nib.load(str(out / "sh.nii.gz")).dataobj)
    assert len(tracked) == 1 and written.dtype == np.float32
    assert np.array_equal(written, tracked[0])
    shell = json.loads((out / "sh.json").read_text())["params"]["shell"]
    assert shell == 1000.0            # the shell nearest b=1000, as DDTracking was trained


def test_a_ddtracking_run_is_guided_by_the_fodf_it_writes(cli, subject, tmp_path, monkeypatch):
    """By default with the weight validated for the shipped ``full`` network (0.3), which the track line records."""
    from difftract.models.ddtracking import getter as dd

    guides = []
    original = dd.DDTrackingGetter.__init__

    def spy(self, *args, guide=None, **kwargs):
        guides.append(guide)
        original(self, *args, guide=guide, **kwargs)

    monkeypatch.setattr(dd.DDTrackingGetter, "__init__", spy)
    out = tmp_path / "guided"
    run_subject(Subject.find(subject), out, RunOptions(methods=("ddtracking",), seed=1, min_len_mm=10),
                console=Console(quiet=True))
    written = np.asarray(nib.load(str(out / "fod.nii.gz")).dataobj)
    assert len(guides) == 1 and guides[0].config.weight == 0.3
    assert np.array_equal(written, guides[0].field.coeffs.numpy())
    record = json.loads((out / "tracks.json").read_text())
    assert record["params"]["fodf_guide"] == 0.3 and record["params"]["fodf_guide_fod"] == str(out / "fod.nii.gz")
    assert json.loads((out / "run.json").read_text())["params"]["fodf_guide"] == 0.3      # the weight used
    line = shlex.split(record["equivalent"])[1:]                # the recorded track line reproduces the run
    assert line[line.index("--sh") + 1] == str(out / "fod.nii.gz") and line[line.index("--fodf-guide") + 1] == "0.3"
    alone = tmp_path / "alone.trx"
    line[line.index("--out") + 1] = str(alone)
    again = cli(*line)
    assert again.returncode == 0, again.stderr
    reference = subject / "mask.nii.gz"
    assert len(_points(alone, reference)) > 0
    assert _same(_points(out / "tracks.trx", reference), _points(alone, reference))


def test_a_network_fits_its_guides_fodf_from_the_scan_when_none_is_given(subject, tmp_path):
    """The Python API as the README shows it: a shipped network given no fODF is guided by default all the
    same (fitted once, when the guide is first needed), and tracks unguided without a fit at weight 0."""
    from difftract.io.dwi import load_mask
    from difftract.models.ddtracking import load_ddtracking
    from difftract.pipeline import LearnedSource, Seeding, Stopping, TrackOptions, track

    found = Subject.find(subject)
    dwi = found.load()
    wm = load_mask(found.wm, dwi.shape, dwi.affine, "stop mask")
    source = LearnedSource.fitted(*load_ddtracking(model="fast"), dwi)
    assert source.fod is None
    for name, weight in (("alone", 0.0), ("default", None)):
        track(dwi, tmp_path / f"{name}.trx", source, Stopping.from_mask(wm, "wm"), Seeding(mask=wm, description="wm"),
              TrackOptions(method="ddtracking", min_len_mm=10, fodf_guide=weight), console=Console(quiet=True))
        assert (source.fod is None) == (weight == 0.0)      # no CSD fit for the network alone
    record = json.loads((tmp_path / "default.json").read_text())["params"]
    assert record["fodf_guide"] == 0.7 and record["fodf_guide_fod"].startswith("CSD lmax 8, b=")
    assert json.loads((tmp_path / "alone.json").read_text())["params"]["fodf_guide"] == 0.0


def test_run_options_refuse_what_cannot_work(subject):
    from difftract.errors import ConfigError

    with pytest.raises(ConfigError, match="--weights and --model apply only"):
        RunOptions(methods=("det",), weights=subject / "dwi.bval")
    with pytest.raises(ConfigError, match="--weights and --model apply only"):
        RunOptions(methods=("prob",), model="fast")
    with pytest.raises(ConfigError, match="give one of them"):
        RunOptions(methods=("ddtracking",), model="fast", weights=subject / "dwi.bval")
    with pytest.raises(ConfigError, match="--model must be one of full, fast"):
        RunOptions(methods=("ddtracking",), model="tiny")
    assert RunOptions().methods == ("det",)      # the default rule: the best on unseen data (README)
    with pytest.raises(ConfigError, match="distinct"):
        RunOptions(methods=("det", "det"))
    with pytest.raises(ConfigError, match="--shell and --lmax"):
        RunOptions(methods=("ddtracking",), lmax=6, fodf_guide=0)
    assert RunOptions(methods=("ddtracking",), lmax=6, fodf_guide=0.3).lmax == 6   # the guide's CSD fit
    unset = RunOptions(methods=("ddtracking",), lmax=6)        # the network's own weight: known once it is read
    assert unset.fodf_guide is None and unset.resolved().fodf_guide == 0.3          # the shipped full network's
    assert RunOptions(methods=("ddtracking",)).resolved({"sha256": "not a shipped network"}).fodf_guide == 0.0
    with pytest.raises(ConfigError, match="--shell and --lmax"):                    # unguided after all
        unset.resolved({"sha256": "not a shipped network"})
    assert RunOptions().record()["fodf_guide"] == 0.0 and RunOptions().resolved() == RunOptions()   # det: as before
    with pytest.raises(ConfigError, match="--fodf-guide only applies to --method ddtracking"):
        RunOptions(methods=("det",), fodf_guide=0.3)
    with pytest.raises(ConfigError, match="--matmul-dtype only applies to --method ddtracking"):
        RunOptions(methods=("det",), matmul_dtype="bfloat16")
    with pytest.raises(ConfigError, match="--matmul-dtype must be one of float32, bfloat16"):
        RunOptions(methods=("ddtracking",), matmul_dtype="float16")
    with pytest.raises(ConfigError, match="--symmetries only applies to --method ddtracking"):
        RunOptions(methods=("det",), symmetries="swap")
    with pytest.raises(ConfigError, match="unknown DDTracking symmetries 'mirror'"):
        RunOptions(methods=("ddtracking",), symmetries="mirror")
    for bad in (1.5, -0.1, float("nan")):        # refused before any fit
        with pytest.raises(ConfigError, match="--fodf-guide must be in"):
            RunOptions(methods=("ddtracking",), fodf_guide=bad)
    assert RunOptions(methods=("ddtracking",), fodf_guide=0.3).record()["fodf_guide"] == 0.3


def test_tracking_a_given_fodf_reads_no_signal(cli, subject, tmp_path, monkeypatch):
    """``track --sh`` needs the grid, not the diffusion signal: no DWI volume is read."""
    from difftract.io import dwi as dwi_module

    fod = tmp_path / "fod.nii.gz"
    scan = [subject / "dwi.nii.gz", subject / "dwi.bval", subject / "dwi.bvec", "--mask", subject / "mask.nii.gz"]
    assert cli("-q", "fit", "csd", *scan, "--out", fod, "--lmax", "6").returncode == 0

    def refuse(*args, **kwargs):
        raise AssertionError("a DWI volume was read")

    monkeypatch.setattr(dwi_module, "iter_volumes", refuse)
    res = cli("-q", "track", *scan, "--sh", fod, "--stop-mask", subject / "wm.nii.gz", "--out", tmp_path / "t.trx")
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "t.json").read_text())["n_streamlines"] > 0
    with pytest.raises(AssertionError, match="volume was read"):      # the spy would see a read
        cli("-q", "track", *scan, "--sh", fod, "--fa-threshold", "0.2", "--out", tmp_path / "fa.trx")
