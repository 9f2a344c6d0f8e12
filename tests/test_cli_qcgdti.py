"""``difftract train qcgdti`` and ``difftract fit dti --method qcg`` end to end (tiny models)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from difftract.cli import main
from difftract.io.gradients import flip_for_fsl
from difftract.phantom import PhantomConfig, save_phantom, simulate
from difftract.weights import absolute_paths, sha256

TINY = ["--widths", "4,8", "--patch", "16", "--epochs", "2", "--samples-per-epoch", "4", "--val-samples", "2",
        "--batch-size", "2", "--device", "cpu"]


def scan_args(d, name="dwi"):
    return [d / f"{name}.nii.gz", d / f"{name}.bval", d / f"{name}.bvec", "--mask", d / "mask.nii.gz"]


@pytest.fixture(scope="module")
def subjects(tmp_path_factory):
    root = tmp_path_factory.mktemp("qcg_subjects")
    dirs = []
    for seed in (1, 2):
        p = simulate(PhantomConfig(preset="crossing", seed=seed, bvals=(1000.0, 2000.0), ndirs=(60, 60), nb0=1))
        save_phantom(p, root / f"s{seed}")
        dirs.append(root / f"s{seed}")
    return dirs


def write_subset(d, name, volumes, bvals=None, bvecs=None):
    """A scan of some volumes of ``d``'s DWI (optionally with other gradients), FSL convention."""
    img = nib.load(d / "dwi.nii.gz")
    data = np.asarray(img.dataobj)[..., volumes]
    nib.save(nib.Nifti1Image(data, img.affine), d / f"{name}.nii.gz")
    all_b = np.loadtxt(d / "dwi.bval")
    all_v = np.loadtxt(d / "dwi.bvec")
    b = all_b[volumes] if bvals is None else bvals
    v = all_v[:, volumes] if bvecs is None else flip_for_fsl(bvecs, img.affine).T
    np.savetxt(d / f"{name}.bval", b[None], fmt="%g")
    np.savetxt(d / f"{name}.bvec", v, fmt="%.6f")


def test_train_then_fit(cli, subjects, tmp_path):
    out = tmp_path / "w.pt"
    res = cli("train", "qcgdti", *subjects, "--out", out, *TINY)
    assert res.returncode == 0, res.stderr
    assert "QCG-DTI full: 2 epochs" in res.stdout
    lines = (tmp_path / "w.metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all("val_loss" in json.loads(line) for line in lines)
    assert (tmp_path / "w.ckpt.pt").exists()
    record = json.loads((tmp_path / "w.json").read_text())
    assert record["weights_sha256"] == sha256(out) and record["params"]["val_subjects"] == ["s2"]
    meta = torch.load(out, weights_only=True)["meta"]   # subjects outside the working folder: names only
    assert meta["subjects"] == ["s1", "s2"] and absolute_paths(meta) == []

    again = cli("train", "qcgdti", *subjects, "--out", out, *TINY)
    assert again.returncode == 2 and "--force" in again.stderr
    (tmp_path / "other.json").write_text("{}")              # any output of the run, the sidecar too
    blocked = cli("train", "qcgdti", *subjects, "--out", tmp_path / "other.pt", *TINY)
    assert blocked.returncode == 2 and "other.json" in blocked.stderr
    assert not (tmp_path / "other.pt").exists() and (tmp_path / "other.json").read_text() == "{}"

    d = subjects[1]
    fit_dir = tmp_path / "qcg"
    res = cli("fit", "dti", *scan_args(d), "--method", "qcg", "--weights", out, "--select-six", "--out-dir", fit_dir)
    assert res.returncode == 0, res.stderr
    assert "DTI QCG-DTI of" in res.stdout
    for name in ("tensor", "fa", "md", "v1"):
        assert (fit_dir / f"{name}.nii.gz").exists()
    side = json.loads((fit_dir / "tensor.json").read_text())
    assert side["params"]["fit_method"] == "QCG-DTI" and len(side["params"]["six_indices"]) == 6
    assert side["params"]["weights_sha256"] == sha256(out)

    # a scan of exactly one b0 and six DWIs is used as it is
    write_subset(d, "six", [0, *side["params"]["six_indices"]])
    res = cli("fit", "dti", *scan_args(d, "six"), "--method", "qcg", "--weights", out, "--out-dir", tmp_path / "q6")
    assert res.returncode == 0, res.stderr
    a = nib.load(fit_dir / "tensor.nii.gz").get_fdata()
    b = nib.load(tmp_path / "q6" / "tensor.nii.gz").get_fdata()
    np.testing.assert_allclose(a, b, atol=1e-9)
    assert side["params"]["selection"]["shell"] == 1000.0     # the lowest shell by default

    # a warm start from these weights, recorded; another architecture is refused before any work
    warm = cli("train", "qcgdti", *subjects, "--out", tmp_path / "warm.pt", "--init", out, "--widths", "4,8",
               "--patch", "16", "--epochs", "1", "--samples-per-epoch", "2", "--val-samples", "2", "--device", "cpu")
    assert warm.returncode == 0, warm.stderr
    assert torch.load(tmp_path / "warm.pt", weights_only=True)["meta"]["init"]["sha256"] == sha256(out)
    other = cli("train", "qcgdti", *subjects, "--out", tmp_path / "other_w.pt", "--init", out, "--widths", "4,4",
                *TINY[2:])
    assert other.returncode == 2 and "architecture" in other.stderr and not (tmp_path / "other_w.pt").exists()
    # ... and from weights without the anisotropy-gain branch, which is added at gain 1
    gain = cli("train", "qcgdti", *subjects, "--out", tmp_path / "gain.pt", "--init", out, "--anisotropy-gain",
               *TINY)
    assert gain.returncode == 0, gain.stderr
    assert torch.load(tmp_path / "gain.pt", weights_only=True)["meta"]["config"]["anisotropy_gain"] is True
    res = cli("fit", "dti", *scan_args(d, "six"), "--method", "qcg", "--weights", tmp_path / "gain.pt",
              "--out-dir", tmp_path / "qg")
    assert res.returncode == 0, res.stderr
    # --gain-only trains that branch alone (here with its MD output): every other weight stays the --init one
    only = cli("train", "qcgdti", *subjects, "--out", tmp_path / "gain_only.pt", "--init", out, "--anisotropy-gain",
               "--gain-input", "invariant", "--md-gain", "--gain-only", *TINY)
    assert only.returncode == 0, only.stderr
    before = torch.load(out, weights_only=True)["state_dict"]
    after = torch.load(tmp_path / "gain_only.pt", weights_only=True)["state_dict"]
    assert set(after) - set(before) == {k for k in after if k.startswith(("gain.", "md_gain."))}
    assert all(torch.equal(before[k], after[k]) for k in before)
    only_meta = torch.load(tmp_path / "gain_only.pt", weights_only=True)["meta"]
    assert only_meta["domain"]["init_domain"] == meta["domain"]
    assert only_meta["trained"] == "anisotropy-gain and MD-gain branches only"
    assert any(after[k].abs().sum() > 0 for k in after if k.startswith("gain.2."))   # the zero last layers moved
    assert any(after[k].abs().sum() > 0 for k in after if k.startswith("md_gain.4."))
    # from weights with a gain, --md-gain --gain-only trains the MD gain alone
    md = cli("train", "qcgdti", *subjects, "--out", tmp_path / "md_only.pt", "--init", tmp_path / "gain.pt",
             "--anisotropy-gain", "--md-gain", "--gain-only", *TINY)
    assert md.returncode == 0, md.stderr
    md_after = torch.load(tmp_path / "md_only.pt", weights_only=True)
    gain_before = torch.load(tmp_path / "gain.pt", weights_only=True)["state_dict"]
    assert md_after["meta"]["trained"] == "MD-gain branch only"
    assert all(torch.equal(gain_before[k], md_after["state_dict"][k]) for k in gain_before)
    refused = cli("train", "qcgdti", *subjects, "--out", tmp_path / "no_init.pt", "--gain-only", *TINY)
    assert refused.returncode == 2 and "--gain-only" in refused.stderr

    # the weights say what they were trained on; a scan outside it is fitted with a one-line warning
    assert meta["domain"]["bvals"] == [1000.0, 2000.0] and meta["domain"]["voxel_size_mm"] == [2.0, 2.0]
    write_subset(d, "b3000", [0, *side["params"]["six_indices"]], bvals=np.array([0.0] + [3000.0] * 6))
    res = cli("fit", "dti", *scan_args(d, "b3000"), "--method", "qcg", "--weights", out, "--out-dir", tmp_path / "q3")
    assert res.returncode == 0, res.stderr
    warned = [line for line in res.stderr.splitlines() if "outside the network's training data" in line]
    assert len(warned) == 1 and "b-values 3000-3000" in warned[0]
    assert json.loads((tmp_path / "q3" / "tensor.json").read_text())["params"]["domain_warnings"]
    assert side["params"]["domain_warnings"] == []

    # many DWIs without --select-six, and a too-small input, are refused with nothing written
    res = cli("fit", "dti", *scan_args(d), "--method", "qcg", "--weights", out, "--out-dir", tmp_path / "no")
    assert res.returncode == 2 and "exactly six" in res.stderr and "--select-six" in res.stderr
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("case,message", [
    ("five", "exactly six diffusion-weighted volumes, got 5"),
    ("b0only", "no diffusion-weighted volume"),   # refused by the loader, before the network
    ("collinear", "collinear"),
])
def test_bad_qspace_input_is_refused(subjects, tmp_path, capsys, case, message):
    d = subjects[0]
    if case == "five":
        write_subset(d, case, [0, 1, 2, 3, 4, 5])
    elif case == "b0only":
        write_subset(d, case, [0, 0])
    else:
        axis = np.array([[0.0, 0.0, 0.0]] + [[0.0, 0.0, 1.0]] * 6)
        write_subset(d, case, list(range(7)), bvals=np.array([0.0] + [1000.0] * 6), bvecs=axis)
    code = main(["-q", "fit", "dti", *map(str, scan_args(d, case)), "--method", "qcg", "--out-dir",
                 str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and f"{case}.bval" in err
    assert not (tmp_path / "out").exists()


def test_qcg_options_need_method_qcg(subjects, tmp_path, capsys):
    code = main(["fit", "dti", *map(str, scan_args(subjects[0])), "--select-six", "--out-dir", str(tmp_path / "o")])
    assert code == 2 and "only to --method qcg" in capsys.readouterr().err


def test_select_six_on_a_missing_shell_is_refused(subjects, tmp_path, capsys):
    code = main(["-q", "fit", "dti", *map(str, scan_args(subjects[0])), "--method", "qcg", "--select-six",
                 "--shell", "1500", "--out-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "no shell b=1500" in err and "1000, 2000" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_train_qcgdti_under_torchrun(subjects, tmp_path, torchrun_train):
    """Two processes (gloo, CPU): DDP training through the CLI writes weights, checkpoint and sidecar once."""
    torchrun_train("qcgdti", *subjects, *TINY, out=tmp_path / "ddp.pt", epochs=2)
