"""NIfTI outputs are named *.nii or *.nii.gz, checked before any work (nibabel picks the format
from the name: a fit to ``--out csd`` used to run for minutes, then fail with a traceback)."""

from __future__ import annotations

import numpy as np
import pytest

from difftract.cli import main
from difftract.errors import ConfigError
from difftract.io.nifti import check_nifti_name, save_nifti


@pytest.mark.parametrize("name", ["fod.nii.gz", "fod.nii", "a.b/fod.nii.gz", "FOD.NII.GZ"])
def test_nifti_names_are_accepted(name):
    assert str(check_nifti_name(name)) == name


@pytest.mark.parametrize("name", ["csd", "fod.gz", "fod.mif", ".nii.gz"])
def test_other_names_are_refused(name, tmp_path):
    with pytest.raises(ConfigError, match=r"\*\.nii or \*\.nii\.gz"):
        save_nifti(tmp_path / name, np.zeros((2, 2, 2)), np.eye(4))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flag", ["--out", "--peaks"])
def test_fit_refuses_a_nameless_output_before_reading_the_scan(flag, tmp_path, capsys):
    args = ["fit", "csd", str(tmp_path / "missing.nii.gz"), "b.bval", "b.bvec", "--out", str(tmp_path / "fod.nii.gz")]
    if flag == "--peaks":
        args += ["--peaks", str(tmp_path / "peaks")]
    else:
        args[args.index("--out") + 1] = str(tmp_path / "csd")
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    assert "must be named *.nii or *.nii.gz" in capsys.readouterr().err   # not "missing.nii.gz: not found"
    assert list(tmp_path.iterdir()) == []
