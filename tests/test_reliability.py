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


def test_run_takes_the_shell_and_lmax_a_q_space_scheme_needs(tmp_path, capsys):
    """DIPY's small_101D has no shell fit for lmax 8: run refuses and names what works, which run accepts."""
    import nibabel as nib
    import numpy as np
    from dipy.data import get_fnames

    subject = tmp_path / "s101"
    subject.mkdir()
    for src, name in zip(get_fnames(name="small_101D"), ("dwi.nii.gz", "dwi.bval", "dwi.bvec")):
        shutil.copy(src, subject / name)
    img = nib.load(subject / "dwi.nii.gz")
    b0 = np.asarray(img.dataobj)[..., 0]
    nib.save(nib.Nifti1Image((b0 > 0.2 * np.percentile(b0, 99)).astype(np.uint8), img.affine), subject / "mask.nii.gz")
    out = tmp_path / "out"
    assert main(["-q", "run", str(subject), "--out", str(out), "--method", "det"]) == 2
    assert "--lmax 6 --shell 2774" in capsys.readouterr().err and not out.exists()
    assert main(["-q", "run", str(subject), "--out", str(out), "--method", "det", "--shell", "2774", "--lmax", "6"]) == 0
    assert json.loads((out / "fod.json").read_text())["params"]["lmax"] == 6
    assert main(["-q", "run", str(subject), "--out", str(tmp_path / "dd"), "--method", "ddtracking",
                 "--shell", "2774"]) == 2             # the shell of the guide's CSD, at lmax 8 unless given
    assert "a lower order would do: --lmax 6" in capsys.readouterr().err
    assert main(["-q", "run", str(subject), "--out", str(tmp_path / "dd"), "--method", "ddtracking",
                 "--fodf-guide", "0", "--shell", "2774"]) == 2
    assert "DDTracking reads" in capsys.readouterr().err
