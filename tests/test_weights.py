"""Shipped weights: checksums verified, tampering refused, the QCG-DTI and DDTracking weights load and run."""

from __future__ import annotations

import re
import shlex

import numpy as np
import pytest

from difftract import weights as W
from difftract.errors import InputError


@pytest.fixture
def fake_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(W, "WEIGHTS_DIR", tmp_path)
    monkeypatch.setattr(W, "SUMS", tmp_path / "SHA256SUMS")
    (tmp_path / "qcgdti.pt").write_bytes(b"weights")
    (tmp_path / "SHA256SUMS").write_text(f"{W.sha256(tmp_path / 'qcgdti.pt')}  qcgdti.pt\n")
    return tmp_path


def test_checksum_is_verified(fake_dir):
    assert W.shipped_weights("qcgdti") == fake_dir / "qcgdti.pt"
    (fake_dir / "qcgdti.pt").write_bytes(b"weightz")
    with pytest.raises(InputError, match="checksum mismatch"):
        W.shipped_weights("qcgdti")
    (fake_dir / "SHA256SUMS").write_text("")
    with pytest.raises(InputError, match="no checksum listed"):
        W.shipped_weights("qcgdti")
    (fake_dir / "qcgdti.pt").unlink()
    with pytest.raises(InputError, match="missing"):
        W.shipped_weights("qcgdti")
    with pytest.raises(InputError, match="no shipped weights"):
        W.shipped_weights("nope")


def test_every_shipped_file_is_listed_small_and_matches():
    files = sorted(p.name for p in W.WEIGHTS_DIR.glob("*.pt"))
    assert files, "no weights shipped"
    sums = W.expected_sums()
    for name in files:
        path = W.WEIGHTS_DIR / name
        assert path.stat().st_size < 20 * 2**20
        assert sums[name] == W.sha256(path)


def test_shipped_qcgdti_runs_on_a_six_dwi_scan():
    from difftract.models.qcgdti.predict import QCGTensorModel
    from difftract.models.qcgdti.schemes import fixed_six
    from difftract.phantom import PhantomConfig, simulate

    p = simulate(PhantomConfig(preset="crossing", seed=5, bvals=(1000.0,), ndirs=(60,), nb0=1))
    model = QCGTensorModel.from_weights(None)
    assert model.meta["model"] == "qcgdti" and model.meta["sha256"] == W.expected_sums()["qcgdti.pt"]
    assert model.meta["target"] == "shell" and "each shell" in model.params["trained_against"]   # in the sidecar
    assert model.meta["domain"]["coils"] == [1, 1] and model.meta["config"]["md_gain"]   # Rician training, MD gain
    fit = model.fit(p.data, p.bvals, p.bvecs, p.mask, fixed_six(p.bvals, p.bvecs))
    assert np.isfinite(fit.fa).all() and 0 < np.median(fit.fa[p.wm]) <= 1
    assert np.median(fit.md[p.mask]) == pytest.approx(0.8e-3, rel=0.3)
    assert "noise_coils_estimate" in fit.params and not fit.params["domain_warnings"]   # inside its domain


def test_shipped_ddtracking_tracks_fibercup(phantom_dir):
    """The shipped DDTracking model on the default fibercup (a scheme and noise draw it was not trained on)."""
    import nibabel as nib
    import torch

    from difftract.eval.tractometer import load_scoring, score
    from difftract.io.dwi import load_subject
    from difftract.models.ddtracking import DDTrackingGetter, load_ddtracking, signal_sh
    from difftract.tracking import BinaryCriterion, Tracker, TrackingParams, random_seeds

    model, meta = load_ddtracking(None)
    assert meta["config"]["variant"] == "full" and meta["sha256"] == W.expected_sums()["ddtracking.pt"]
    dwi = load_subject(phantom_dir)
    wm = np.asarray(nib.load(phantom_dir / "wm.nii.gz").dataobj) > 0
    seeds = random_seeds(wm, 1, torch.Generator().manual_seed(0))
    seeds = seeds[torch.randperm(len(seeds), generator=torch.Generator().manual_seed(0))[:400]]
    getter = DDTrackingGetter(model, signal_sh(dwi), 45.0, voxel_sizes=dwi.voxel_sizes)
    tracker = Tracker(getter, BinaryCriterion(wm), dwi.voxel_sizes, TrackingParams(step_mm=2.0, min_len_mm=20))
    lines = [s.numpy() for chunk in tracker.track(seeds) for s in chunk.split()]
    result = score(lines, load_scoring(phantom_dir)).scores
    assert result["VB"] == 7 and result["VS_ratio"] > 0.8 and result["NC_ratio"] < 0.15, result


def test_load_named_takes_a_shipped_name_or_a_weights_file(tmp_path):
    """What --init and the scripts' --model take: ``fast`` is the shipped file; a path loads that file; a missing
    one is an input error naming it."""
    import shutil

    from difftract.models.ddtracking.getter import load_named

    _, meta = load_named("fast")
    assert meta["sha256"] == W.expected_sums()["ddtracking_fast.pt"]
    shutil.copyfile(W.WEIGHTS_DIR / "ddtracking_fast.pt", tmp_path / "mine.pt")
    _, mine = load_named(tmp_path / "mine.pt")
    assert mine["sha256"] == meta["sha256"] and mine["config"] == meta["config"]
    with pytest.raises(InputError, match="missing.pt"):
        load_named(tmp_path / "missing.pt")


def test_set_checksum_keeps_the_other_lines(tmp_path):
    sums = tmp_path / "SHA256SUMS"
    a, b, c = "a" * 64, "b" * 64, "c" * 64
    sums.write_text(f"{a}  qcgdti.pt\n{b}  ddtracking.pt\n")
    W.set_checksum("qcgdti.pt", c, sums)
    assert sums.read_text() == f"{c}  qcgdti.pt\n{b}  ddtracking.pt\n"      # replaced in place, order kept
    W.set_checksum("ddtracking.pt", a, sums)
    assert sums.read_text() == f"{c}  qcgdti.pt\n{a}  ddtracking.pt\n"
    W.set_checksum("new.pt", b, sums)
    assert sums.read_text().splitlines() == [f"{c}  qcgdti.pt", f"{a}  ddtracking.pt", f"{b}  new.pt"]
    W.set_checksum("x.pt", a, tmp_path / "fresh")                              # no list yet: created
    assert (tmp_path / "fresh").read_text() == f"{a}  x.pt\n"
    with pytest.raises(InputError, match="not a SHA256"):
        W.set_checksum("qcgdti.pt", "nope", sums)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left behind


def test_install_rewrites_one_file_and_its_line(tmp_path, monkeypatch):
    import torch

    from difftract.training.files import load_weights, save_weights

    monkeypatch.setattr(W, "WEIGHTS_DIR", tmp_path / "weights")
    monkeypatch.setattr(W, "SUMS", tmp_path / "weights" / "SHA256SUMS")
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "ddtracking.pt").write_bytes(b"other model")
    other = f"{W.sha256(tmp_path / 'weights' / 'ddtracking.pt')}  ddtracking.pt"
    W.SUMS.write_text(f"{'0' * 64}  qcgdti.pt\n{other}\n")
    state = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([1, 2])}
    src = save_weights(tmp_path / "trained.pt", state, {"model": "qcgdti", "subjects": ["train/random_1001"]},
                       {"best_epoch": 3})
    digest = W.install(src, "qcgdti", {"build": "python scripts/build_weights.py qcgdti --install"})
    assert W.SUMS.read_text().splitlines() == [f"{digest}  qcgdti.pt", other]
    assert W.shipped_weights("qcgdti") == tmp_path / "weights" / "qcgdti.pt"
    blob = load_weights(W.WEIGHTS_DIR / "qcgdti.pt")
    assert blob["meta"] == {"model": "qcgdti", "subjects": ["train/random_1001"],
                            "build": "python scripts/build_weights.py qcgdti --install"}
    assert blob["train"] == {"best_epoch": 3} and all(torch.equal(blob["state_dict"][k], v) for k, v in state.items())

    bad = save_weights(tmp_path / "bad.pt", state, {"model": "qcgdti", "subjects": ["/work/x/train/random_1001"]})
    with pytest.raises(InputError, match="absolute paths"):
        W.install(bad, "qcgdti")
    with pytest.raises(InputError, match="not ddtracking weights"):
        W.install(src, "ddtracking")
    assert W.SUMS.read_text().splitlines() == [f"{digest}  qcgdti.pt", other]


def test_absolute_paths():
    meta = {"a": ["train/random_1001", "/work/x", {"b": "~/y"}], "n": "inputs / mean b0; um^2/ms", "c": 3,
            "/k": 1, "w": "C:\\data"}
    assert sorted(W.absolute_paths(meta)) == sorted(["/work/x", "~/y", "/k", "C:\\data"])


# a path of some machine: after whitespace, a quote, a bracket or '=' (not 'um^2/ms' or 'a/b')
_PATH_IN_TEXT = re.compile(r"(?:^|[\s`'\"(=\[])((?:/|~/)[A-Za-z0-9_.-]+)")


def test_shipped_weights_name_no_path_outside_the_repository():
    """No README line or weights metadata points to a folder of the machine that built them."""
    from difftract.training.files import load_weights

    readme = (W.WEIGHTS_DIR / "README.md").read_text()
    assert _PATH_IN_TEXT.findall(readme) == [] and "/work" not in readme
    for name, file in W.SHIPPED.items():
        blob = load_weights(W.WEIGHTS_DIR / file)
        assert W.absolute_paths(blob["meta"]) == [] and W.absolute_paths(blob["train"]) == [], file
        assert blob["meta"]["build"] == f"python scripts/build_weights.py {name} --install"
        assert f"`{blob['meta']['build']}`" in readme
        assert all(not s.startswith(("/", "..")) for s in blob["meta"].get("subjects", []))


def _build_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "build_weights.py"
    spec = importlib.util.spec_from_file_location("build_weights", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_build_script_runs_the_documented_recipe(tmp_path, capsys):
    """scripts/build_weights.py's recipes are those weights/README.md documents (dry run: nothing trained)."""
    bw = _build_script()
    readme = (W.WEIGHTS_DIR / "README.md").read_text()
    args = re.findall(r'^ARGS="(.*)"$', readme, re.M)
    phantom_recipes = ("qcgdti_phantoms", "ddtracking_phantoms")
    assert args == [" ".join([*bw.RECIPES[m]["options"], "--device", "cpu"]) for m in phantom_recipes]
    assert " ".join(bw.QCG_SCHEME) in readme   # the scheme of the phantoms in the README's loop
    for model in ("ddtracking", "ddtracking_fast"):     # streamed: one run, no phantom step
        assert bw.main([model, "--dry-run", "--work", str(tmp_path / model)]) == 0
        log = (tmp_path / model / "commands.sh").read_text()
        epochs = bw.RECIPES[model]["epochs"][0]
        line = shlex.join(["difftract", "-q", "train", "ddtracking", "--out", f"{model}/full.pt", "--epochs",
                           str(epochs), *bw.RECIPES[model]["options"], "--device", "cpu"])
        assert line in readme and "simulate" not in log and f"--out {model}/full.pt --epochs {epochs} " in log
        assert "full_long" not in log
    for model in ("ddtracking", "ddtracking_fast"):     # the input ablation: the same run on the CSD fODF
        fodf = bw.RECIPES[f"{model}_fodf"]
        assert fodf["options"] == [*bw.RECIPES[model]["options"], "--input", "fodf"] and fodf["install"] is False
        assert f"scripts/build_weights.py {model}_fodf" in readme
        assert bw.main([f"{model}_fodf", "--dry-run", "--work", str(tmp_path / "fodf")]) == 0
    for suffix, extra in (("halfstep", ["--step", "0.5"]), ("halfstep_jitter", ["--step", "0.5", "--jitter", "0.15"])):
        half = bw.RECIPES[f"ddtracking_fast_{suffix}"]   # the step ablation: the same run at half a voxel
        assert half["options"] == [*bw.RECIPES["ddtracking_fast"]["options"], *extra] and half["install"] is False
        assert f"scripts/build_weights.py ddtracking_fast_{suffix}" in readme
    control, equivariant = bw.RECIPES["ddtracking_finetune"], bw.RECIPES["ddtracking_equivariant"]
    assert equivariant["options"] == [*control["options"], "--equivariance", "5"] and not equivariant["install"]
    assert control["options"][-2:] == ["--init", "full"] and "--stream-base" in control["options"]
    for name in ("ddtracking_finetune", "ddtracking_equivariant"):   # fine-tunings of the shipped `full`
        assert f"scripts/build_weights.py {name}" in readme
        assert bw.main([name, "--dry-run", "--work", str(tmp_path / name)]) == 0
    paper = bw.RECIPES["qcgdti_paper"]   # the paper's architecture: the earlier recipe without the least-squares input
    assert paper["options"] == [*bw.RECIPES["qcgdti_phantoms"]["options"], "--no-lsq-input"] and not paper["install"]
    assert "scripts/build_weights.py qcgdti_paper" in readme
    assert bw.main(["qcgdti_paper", "--dry-run", "--work", str(tmp_path / "paper")]) == 0
    trains = [line for line in (tmp_path / "paper" / "commands.sh").read_text().splitlines() if " train qcgdti " in line]
    assert len(trains) == 2 and all(line.rstrip(")").split(" --out ")[0].endswith(
        " ".join(f"train/{n}" for n in bw.RECIPES["qcgdti_phantoms"]["subjects"])) for line in trains)
    assert all("--no-lsq-input" in line for line in trains) and trains[1].rstrip(")").endswith("--resume")
    # QCG-DTI: the earlier recipe's phantoms and two runs first, then the streamed fine-tuning from its result
    assert bw.main(["qcgdti", "--dry-run", "--work", str(tmp_path / "qcgdti")]) == 0
    log = (tmp_path / "qcgdti" / "commands.sh").read_text()
    fine_tune = shlex.join(["difftract", "-q", "train", "qcgdti", "--out", "qcgdti/full.pt", "--epochs",
                            str(bw.RECIPES["qcgdti"]["epochs"][0]), *bw.RECIPES["qcgdti"]["options"], "--init",
                            "qcgdti_phantoms/full_long.pt", "--device", "cpu"])
    assert fine_tune in readme and fine_tune in log
    assert log.index("--out qcgdti_phantoms/full_long.pt") < log.index("--out qcgdti/full.pt")
    # --quick keeps each recipe's flow: a streamed recipe is one run there too
    assert bw.main(["ddtracking", "--quick", "--dry-run", "--work", str(tmp_path / "quick")]) == 0
    quick = (tmp_path / "quick" / "commands.sh").read_text()
    assert "--out ddtracking/full.pt --epochs 1 " in quick and "full_long" not in quick
    for model in phantom_recipes:
        assert bw.main([model, "--dry-run", "--work", str(tmp_path / model)]) == 0
        log = (tmp_path / model / "commands.sh").read_text()
        first, last = bw.RECIPES[model]["epochs"]
        assert f"--out {model}/full.pt --epochs {first} " in log
        assert f"--out {model}/full_long.pt --epochs {last} " in log and log.rstrip().endswith("--resume")
        for name in bw.RECIPES[model]["subjects"]:
            assert f"simulate train/{name} {' '.join(bw.PHANTOMS[name])}" in log
            preset, seed = name.rsplit("_", 1)
            opts = bw.PHANTOMS[name]
            in_loop = f'"{preset} {seed} {opts[opts.index("--snr") + 1]}"' in readme and opts[6:] == bw.QCG_SCHEME
            assert in_loop or f"simulate train/{name} {' '.join(opts)}" in readme, name
    with pytest.raises(SystemExit):
        bw.main(["qcgdti", "--quick", "--install"])
    assert "never installed" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bw.main(["ddtracking_phantoms", "--install"])
    assert "rebuilds no shipped file" in capsys.readouterr().err
