"""DDTracking's training domain: recorded by training and in the shipped weights, checked by track and run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from difftract.cli import main
from difftract.io.dwi import load_subject
from difftract.models.ddtracking.domain import read_shell, scan_domain, training_domain
from difftract.phantom import PhantomConfig, save_phantom, simulate
from difftract.training.domain import check_domain, stream_domain
from difftract.training.files import load_weights
from difftract.training.recipe import phantom_recipe
from difftract.weights import shipped_weights


def _subject(root, name, **kw):
    config = dict(preset="crossing", seed=3, snr=20.0, nb0=2, bvals=(1000.0,), ndirs=32)
    return save_phantom(simulate(PhantomConfig(**{**config, **kw})), root / name)


def test_the_read_shell_is_the_one_nearest_1000_and_its_directions():
    bvals = np.array([0, 5, 1000, 1010, 995, 2000, 2000, 3000] + [2000] * 10, float)
    shell, n = read_shell(bvals)
    assert abs(shell - 1000) < 5 and n == 3     # the shell (its rounded mean b-value) and its three volumes
    assert read_shell(np.array([0, 3000, 3000, 2000])) == (2000.0, 1)
    # a scatter of +-60 around b = 1000 is one shell, as every fit groups it (reconst.sh.shell_groups)
    assert read_shell(np.array([0, 940, 1000, 1060, 2000])) == (1000.0, 3)
    # a network of the CSD fODF reads the highest shell, as the CSD fit picks it
    shell, n = read_shell(bvals, "fodf")
    assert abs(shell - 3000) < 5 and n == 1


def test_training_subjects_give_the_shells_directions_and_snr(tmp_path):
    a = _subject(tmp_path, "a", snr=15.0, ndirs=32)
    b = _subject(tmp_path, "b", snr=30.0, bvals=(1500.0, 3000.0), ndirs=(64, 30))
    d = training_domain([a, b])
    assert d["bvals"] == [1000.0, 1500.0] and d["ndirs"] == [32, 64] and d["snr"] == [15.0, 30.0]
    assert d["voxel_size_mm"] == [2.0, 2.0]
    d = training_domain([a, b], "fodf")
    assert d["bvals"] == [1000.0, 3000.0] and d["ndirs"] == [30, 32]


def test_a_stream_domain_has_the_direction_counts():
    template = phantom_recipe("random", {"randomize": True, "acquisition_ranges": {"ndirs": [20, 90]}})
    d = stream_domain(template, ("random", "brain-random"))
    assert d["ndirs"] == [20, 90] and d["presets"] == ["random", "brain-random"]
    assert stream_domain(PhantomConfig(preset="random", ndirs=(40, 60), bvals=(1000.0, 2000.0)))[
        "ndirs"] == [40, 60]


def test_fewer_directions_than_in_training_is_outside_more_is_not():
    domain = {"bvals": [1000.0, 1500.0], "ndirs": [32, 90]}
    assert check_domain(domain, np.array([1000.0]), ndirs=120) == []
    found = check_domain(domain, np.array([1000.0]), ndirs=12)
    assert len(found) == 1 and "12 diffusion directions, fewer than the training minimum 32" in found[0]


def test_the_shipped_models_carry_their_domain():
    for name in ("ddtracking", "ddtracking_fast"):
        domain = load_weights(shipped_weights(name))["meta"]["domain"]
        assert domain["bvals"] == [700.0, 3000.0] and domain["ndirs"] == [30, 90], name
        assert domain["snr"] == [8.0, 50.0] and domain["voxel_size_mm"] == [1.75, 2.5], name
        assert domain["presets"] == ["random", "brain-random"] and "kappa" in domain["tissue"], name


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    """A scan the shipped models never saw: b = 4000 only, 20 directions, 3 mm voxels."""
    return _subject(tmp_path_factory.mktemp("dd_domain"), "b4000", bvals=(4000.0,), ndirs=20, voxel_size=3.0)


def test_scan_domain_names_each_setting_outside(outside):
    meta = load_weights(shipped_weights("ddtracking"))["meta"]
    found = scan_domain(meta, load_subject(outside))
    messages = found["domain_warnings"]
    assert len(messages) == 3, messages
    assert "b-values 4000-4000" in messages[0] and "20 diffusion directions" in messages[1]
    assert "voxel size 3" in messages[2]
    assert 12 < found["b0_snr_estimate"] < 30 and found["training_domain"] == meta["domain"]
    assert scan_domain({}, load_subject(outside))["domain_warnings"] == []   # weights without a domain


def test_scan_domain_of_an_fodf_network_checks_the_highest_shell(tmp_path):
    """b = 1000 (32 directions) and 3000 (12): a signal network reads the first, inside its domain; a network
    of the fODF reads the second, whose direction count lies outside."""
    scan = load_subject(_subject(tmp_path, "two", bvals=(1000.0, 3000.0), ndirs=(32, 12)))
    meta = load_weights(shipped_weights("ddtracking"))["meta"]
    assert scan_domain(meta, scan)["domain_warnings"] == []
    fodf = {**meta, "config": {**meta["config"], "input": "fodf"}}
    warnings = scan_domain(fodf, scan)["domain_warnings"]
    assert len(warnings) == 1 and "12 diffusion directions" in warnings[0]


def test_track_warns_in_one_line_and_the_sidecar_records_it(outside, tmp_path, capsys):
    out = tmp_path / "dd.trk"
    scan = [str(outside / f) for f in ("dwi.nii.gz", "dwi.bval", "dwi.bvec")]
    argv = ["track", *scan, "--mask", str(outside / "mask.nii.gz"), "--stop-mask", str(outside / "wm.nii.gz"),
            "--method", "ddtracking", "--model", "fast", "--out", str(out), "--min-len-mm", "4"]
    assert main(argv) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "training data" in line]
    assert len(lines) == 1 and "dwi.nii.gz is outside the network's training data" in lines[0]
    record = json.loads(out.with_suffix(".json").read_text())
    assert len(record["params"]["domain_warnings"]) == 3 and record["params"]["training_domain"]["ndirs"] == [30, 90]
    assert record["params"]["weights"].endswith("ddtracking_fast.pt")
    # the shipped model's validated fODF guide, its CSD at the highest order 20 directions allow
    assert record["params"]["fodf_guide"] == 0.7 and record["params"]["fodf_guide_fod"] == "CSD lmax 6, b=4000"
