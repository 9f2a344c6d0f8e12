"""Training refuses test phantoms: a test seed in dwi.json, or a phantom marked as test data."""

from __future__ import annotations

import json

import pytest

from difftract.errors import ConfigError
from difftract.phantom import PhantomConfig, save_phantom, simulate
from difftract.phantom.splits import check_training_subject

TINY = dict(preset="crossing", bvals=(1000.0,), ndirs=6, nb0=1, streamlines_per_bundle=3)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    root = tmp_path_factory.mktemp("guard")
    base = simulate(PhantomConfig(seed=5, **TINY))
    save_phantom(base, root / "train_seed")
    save_phantom(base, root / "marked", extra={"test_data": True})
    save_phantom(simulate(PhantomConfig(seed=9001, **TINY)), root / "test_seed")
    return root


def test_a_training_seed_passes_and_real_data_has_no_split(phantoms, tmp_path):
    check_training_subject(phantoms / "train_seed")
    check_training_subject(tmp_path)                          # no dwi.json: real data
    (tmp_path / "dwi.json").write_text(json.dumps({"EchoTime": 0.08}))   # a scanner's sidecar
    check_training_subject(tmp_path)


def test_test_seeds_and_test_data_are_refused(phantoms):
    with pytest.raises(ConfigError, match="phantom seed 9001, which is reserved for testing"):
        check_training_subject(phantoms / "test_seed")
    with pytest.raises(ConfigError, match="is test data"):
        check_training_subject(phantoms / "marked")


@pytest.mark.parametrize("model", ["qcgdti", "ddtracking"])
@pytest.mark.parametrize("subject", ["test_seed", "marked"])
def test_train_commands_refuse_them_in_one_line(cli, phantoms, tmp_path, model, subject):
    res = cli("train", model, phantoms / "train_seed", phantoms / subject, "--out", tmp_path / "w.pt",
              "--epochs", "1", "--device", "cpu")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and str(phantoms / subject) in lines[0]
    assert not (tmp_path / "w.pt").exists()
