"""SIGTERM like Ctrl-C, weights checked against their training sidecar, run's loader options."""

from __future__ import annotations

import json
import os
import shutil
import signal

import pytest

from difftract.cli import main
from difftract.errors import InputError


def _terminate_self(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    raise AssertionError("SIGTERM did not interrupt the command")


def test_sigterm_removes_partial_outputs_and_exits_143(monkeypatch, capsys, scan, tmp_path_factory):
    from difftract.reconst.dti import TensorModel

    s = scan()
    out = tmp_path_factory.mktemp("out")
    monkeypatch.setattr(TensorModel, "fit", _terminate_self)
    previous = signal.getsignal(signal.SIGTERM)
    code = main(["-q", "fit", "dti", str(s["dwi"]), str(s["bval"]), str(s["bvec"]), "--mask", str(s["mask"]),
                 "--out-dir", str(out / "dti")])
    assert code == 128 + signal.SIGTERM
    assert "terminated" in capsys.readouterr().err
    assert list(out.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) == previous      # main() restores the handler it replaced


def test_weights_whose_sidecar_lists_another_checksum_are_refused(tmp_path):
    from difftract.models.ddtracking.getter import load_ddtracking
    from difftract.weights import sha256, shipped_weights

    weights = tmp_path / "mine.pt"
    shutil.copy(shipped_weights("ddtracking"), weights)
    (tmp_path / "mine.json").write_text(json.dumps({"weights_sha256": sha256(weights)}))
    assert load_ddtracking(weights)[1]["sha256"] == sha256(weights)
    (tmp_path / "mine.json").write_text(json.dumps({"weights_sha256": "0" * 64}))
    with pytest.raises(InputError, match="checksum mismatch.*mine.json"):
        load_ddtracking(weights)
    (tmp_path / "mine.json").write_text("not json")       # a foreign sidecar: nothing to check against
    load_ddtracking(weights)


def test_run_accepts_zero_nonfinite(cli):
    help_text = cli("run", "--help").stdout
    assert "--zero-nonfinite" in help_text
