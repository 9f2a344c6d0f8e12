"""``difftract train ddtracking`` and ``difftract track --method ddtracking`` end to end (tiny models)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from difftract.cli import main
from difftract.io.tractogram import load_tractogram
from difftract.phantom import PhantomConfig, save_phantom, simulate
from difftract.weights import absolute_paths, sha256

TINY = ["--gru-hidden", "16", "--z-dim", "8", "--v-dim", "8", "--conv-channels", "4", "--denoiser-width", "8",
        "--epochs", "2", "--samples-per-epoch", "16", "--val-samples", "8", "--batch-size", "8", "--window", "12",
        "--device", "cpu"]


@pytest.fixture(scope="module")
def subjects(tmp_path_factory):
    root = tmp_path_factory.mktemp("dd_subjects")
    dirs = []
    for seed in (1, 2):
        p = simulate(PhantomConfig(preset="crossing", seed=seed, ndirs=32, streamlines_per_bundle=40))
        dirs.append(save_phantom(p, root / f"s{seed}"))
    return dirs


@pytest.fixture(scope="module")
def weights(subjects, tmp_path_factory):
    out = tmp_path_factory.mktemp("dd_weights") / "w.pt"
    assert main(["-q", "train", "ddtracking", *map(str, subjects), "--out", str(out), *TINY]) == 0
    return out


def scan_args(d):
    return [d / "dwi.nii.gz", d / "dwi.bval", d / "dwi.bvec", "--mask", d / "mask.nii.gz",
            "--stop-mask", d / "wm.nii.gz"]


def test_train_outputs(weights, subjects):
    rows = [json.loads(line) for line in weights.with_name("w.metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(np.isfinite(r["val_loss"]) and "val_angle_deg" in r and "train_loss_h" in r for r in rows)
    side = json.loads(weights.with_name("w.json").read_text())
    assert side["weights_sha256"] == sha256(weights)
    assert side["params"]["config"]["variant"] == "full" and side["params"]["step_voxels"] == 1.0
    assert side["params"]["val_subjects"] == [subjects[-1].name]
    blob = torch.load(weights, weights_only=True)
    assert blob["meta"]["model"] == "ddtracking"
    assert blob["meta"]["subjects"] == [s.name for s in subjects] and absolute_paths(blob["meta"]) == []
    assert any(weights.parent.glob("w.cache/*.npz"))
    assert main(["-q", "train", "ddtracking", *map(str, subjects), "--out", str(weights), *TINY]) != 0  # no --force


def test_resume_continues_exactly(weights, subjects, tmp_path):
    """Interrupted after epoch 1 and resumed: the same weights as an uninterrupted run (the fixture's, same options)."""
    part = tmp_path / "part.pt"
    one = [a if a != "2" or TINY[i - 1] != "--epochs" else "1" for i, a in enumerate(TINY)]
    assert main(["-q", "train", "ddtracking", *map(str, subjects), "--out", str(part), *one]) == 0
    assert main(["-q", "train", "ddtracking", *map(str, subjects), "--out", str(part), *TINY, "--resume"]) == 0
    a = torch.load(weights.with_name("w.ckpt.pt"), weights_only=True)["model"]
    b = torch.load(tmp_path / "part.ckpt.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_track_with_ddtracking(weights, subjects, tmp_path, capsys):
    d = subjects[0]
    common = [*scan_args(d), "--method", "ddtracking", "--weights", weights, "--seeds-per-voxel", "1",
              "--min-len-mm", "0"]
    outs = {}
    for name, extra in (("det_a", []), ("det_b", ["--seed", "9"]), ("sto_1", ["--stochastic", "--sampler-steps", "3"]),
                        ("sto_1b", ["--stochastic", "--sampler-steps", "3"]),
                        ("sto_2", ["--stochastic", "--sampler-steps", "3", "--seed", "2"])):
        out = tmp_path / f"{name}.trx"
        assert main(["-q", "track", *map(str, common), "--out", str(out), *extra]) == 0
        t = load_tractogram(out)
        outs[name] = (t.streamlines.get_data().copy(), np.asarray(t.streamlines._lengths).copy())
    same = lambda a, b: a[0].shape == b[0].shape and np.array_equal(a[0], b[0])   # noqa: E731
    assert len(outs["det_a"][1]) > 0
    assert not same(outs["det_a"], outs["det_b"])          # another --seed: other random seed points
    assert same(outs["sto_1"], outs["sto_1b"]) and not same(outs["sto_1"], outs["sto_2"])
    side = json.loads((tmp_path / "sto_1.json").read_text())
    assert side["params"]["model"] == "ddtracking" and side["params"]["weights_sha256"] == sha256(weights)
    assert side["params"]["stochastic"] is True and side["params"]["sampler_steps"] == 3
    assert side["params"]["step_mm"] == 2.0                  # one voxel of the 2 mm phantom


def test_track_with_the_fodf_guide(weights, subjects, tmp_path):
    """--fodf-guide fits CSD (or reads --sh), changes the streamlines, and the sidecar says how."""
    d = subjects[0]
    common = [*map(str, scan_args(d)), "--method", "ddtracking", "--weights", str(weights), "--seeds-per-voxel", "1",
              "--min-len-mm", "0"]
    out = {name: tmp_path / f"{name}.trx" for name in ("plain", "guided", "given")}
    fod = tmp_path / "fod.nii.gz"
    assert main(["-q", "fit", "csd", *map(str, scan_args(d)[:5]), "--out", str(fod)]) == 0
    assert main(["-q", "track", *common, "--out", str(out["plain"])]) == 0
    assert main(["-q", "track", *common, "--fodf-guide", "0.5", "--out", str(out["guided"])]) == 0
    assert main(["-q", "track", *common, "--fodf-guide", "0.5", "--sh", str(fod), "--out", str(out["given"])]) == 0
    lines = {k: load_tractogram(p).streamlines.get_data() for k, p in out.items()}
    assert lines["plain"].shape != lines["guided"].shape or not np.array_equal(lines["plain"], lines["guided"])
    assert np.array_equal(lines["guided"], lines["given"])   # the same CSD fit, fitted or read
    guided = json.loads((tmp_path / "guided.json").read_text())["params"]
    assert guided["fodf_guide"] == 0.5 and guided["fodf_guide_angle"] == 30.0
    assert guided["fodf_guide_fod"] == "CSD lmax 8, b=1000"      # the highest shell with enough directions
    assert json.loads((tmp_path / "given.json").read_text())["params"]["fodf_guide_fod"] == str(fod)
    assert json.loads((tmp_path / "plain.json").read_text())["params"]["fodf_guide"] == 0.0


def test_track_deterministic_same_seed_same_tractogram(weights, subjects, tmp_path):
    d = subjects[1]
    paths = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.tck"
        assert main(["-q", "track", *map(str, scan_args(d)), "--method", "ddtracking", "--weights", str(weights),
                     "--seeds-per-voxel", "1", "--min-len-mm", "0", "--seed", "4", "--out", str(out)]) == 0
        paths.append(out)
    a, b = (load_tractogram(p, reference=d / "dwi.nii.gz").streamlines for p in paths)
    assert len(a) > 0 and np.array_equal(a.get_data(), b.get_data())


@pytest.mark.parametrize("extra, message", [
    (["--method", "det", "--stochastic"], "only apply to --method ddtracking"),
    (["--method", "ddtracking", "--sampler-steps", "0"], "at least 1"),
    (["--method", "ddtracking", "--integrator", "rk4"], "--integrator euler"),
    (["--method", "det", "--seeds-per-voxel", "0"], "--seeds-per-voxel must be at least 1"),
    (["--method", "det", "--model", "fast"], "--weights and --model only apply to --method ddtracking"),
    (["--method", "ddtracking", "--model", "fast", "--weights", "w.pt"], "give one of them"),
    (["--method", "det", "--fodf-guide", "0.3"], "only apply to --method ddtracking"),
    (["--method", "ddtracking", "--fodf-guide", "1.5"], "--fodf-guide must be in [0, 1]"),
    (["--method", "ddtracking", "--fodf-guide", "0", "--sh", "fod.nii.gz"], "DDTracking reads the DWI itself"),
])
def test_bad_options(subjects, tmp_path, capsys, extra, message):
    d = subjects[0]
    assert main(["track", *map(str, scan_args(d)), "--out", str(tmp_path / "t.trx"), *extra]) != 0
    assert message in capsys.readouterr().err
    assert not (tmp_path / "t.trx").exists()


def test_wrong_weights_are_refused(subjects, tmp_path, capsys):
    from difftract.training.files import save_weights

    bogus = tmp_path / "qcg.pt"
    save_weights(bogus, {"w": torch.zeros(1)}, {"model": "qcgdti"})
    assert main(["track", *map(str, scan_args(subjects[0])), "--out", str(tmp_path / "t.trx"),
                 "--method", "ddtracking", "--weights", str(bogus)]) != 0
    err = capsys.readouterr().err
    assert "qcg.pt" in err and "not DDTracking weights" in err


def test_train_under_torchrun(subjects, tmp_path, torchrun_train):
    """Two processes (gloo, CPU): DDP training writes weights, checkpoint, metrics and sidecar once."""
    torchrun_train("ddtracking", *subjects, *TINY, out=tmp_path / "ddp.pt", epochs=2)


def test_fodf_input_end_to_end(weights, subjects, tmp_path):
    """--input fodf: the weights say so, the features are the CSD fODF (their own cache entries), and
    ``track`` and ``run`` fit that fODF for the network (``run`` writes it as fod_ddtracking.nii.gz)."""
    from difftract.io.dwi import load_subject
    from difftract.io.nifti import load_nifti
    from difftract.models.ddtracking.data import FODF_SCALE, fodf_sh
    from difftract.models.ddtracking.getter import load_ddtracking
    from difftract.pipeline import LearnedSource

    out = tmp_path / "f.pt"
    one = [a if a != "2" or TINY[i - 1] != "--epochs" else "1" for i, a in enumerate(TINY)]
    cache = tmp_path / "cache"
    assert main(["-q", "train", "ddtracking", *map(str, subjects), "--out", str(out), *one, "--input", "fodf",
                 "--cache-dir", str(cache)]) == 0
    blob = torch.load(out, weights_only=True)
    assert blob["meta"]["config"]["input"] == "fodf" and blob["meta"]["input"].startswith("CSD fODF")
    assert "input" not in torch.load(weights, weights_only=True)["meta"]["config"]   # signal: as before the option
    assert len(list(cache.glob("*.npz"))) == 2
    signal_cache = sorted(weights.parent.glob("w.cache/*.npz"))
    assert {p.name for p in cache.glob("*.npz")}.isdisjoint({p.name for p in signal_cache})
    dwi = load_subject(subjects[0])
    with np.load(next(cache.glob(f"{subjects[0].name}-*.npz"))) as z:
        np.testing.assert_array_equal(z["sh"], fodf_sh(dwi))

    tracks = tmp_path / "t.trx"
    assert main(["-q", "track", *map(str, scan_args(subjects[0])), "--method", "ddtracking", "--weights", str(out),
                 "--seeds-per-voxel", "1", "--min-len-mm", "0", "--out", str(tracks)]) == 0
    assert json.loads(tracks.with_suffix(".json").read_text())["params"]["input"].startswith("CSD fODF")

    run_dir = tmp_path / "run"
    assert main(["-q", "run", str(subjects[0]), "--out", str(run_dir), "--method", "ddtracking", "--weights", str(out),
                 "--seeds-per-voxel", "1", "--min-len-mm", "0", "--device", "cpu"]) == 0
    assert not (run_dir / "sh.nii.gz").exists()
    fod = np.asarray(load_nifti(run_dir / "fod_ddtracking.nii.gz").dataobj)
    wm = np.asarray(load_nifti(subjects[0] / "wm.nii.gz").dataobj) > 0
    assert fod.shape[-1] == 28 and abs(float(fod[wm, 0].mean()) * FODF_SCALE - 1.0) < 0.15   # fibre density ~1
    # what the network read: the scaled fODF, in track and in run alike (same seeds: the same streamlines)
    model, meta = load_ddtracking(out)
    np.testing.assert_array_equal(LearnedSource.fitted(model, meta, dwi).sh, fodf_sh(dwi))
    assert json.loads(tracks.with_suffix(".json").read_text())["params"]["fodf_guide"] == 0.0   # no validated weight
    ran, tracked = (load_tractogram(p).streamlines for p in (run_dir / "tracks.trx", tracks))
    assert len(tracked) > 0 and np.array_equal(ran.get_data(), tracked.get_data())


def test_track_with_bfloat16_products(weights, subjects, tmp_path, monkeypatch, capsys):
    """--matmul-dtype bfloat16: the same seeds give about the float32 run's streamlines (rounding may end one
    sooner or later), the same run twice the same tractogram, and the sidecar says which products ran."""
    d = subjects[1]
    common = [*map(str, scan_args(d)), "--method", "ddtracking", "--weights", str(weights), "--seeds-per-voxel", "1",
              "--min-len-mm", "0", "--seed", "4"]
    runs = {}
    bf16 = ["--matmul-dtype", "bfloat16"]
    for name, extra in (("f32", []), ("bf16", bf16), ("bf16b", bf16)):
        out = tmp_path / f"{name}.trx"
        assert main(["-q", "track", *common, *extra, "--out", str(out)]) == 0
        runs[name] = load_tractogram(out).streamlines
    assert np.array_equal(runs["bf16"].get_data(), runs["bf16b"].get_data())
    n16, n32 = len(runs["bf16"]), len(runs["f32"])
    assert n32 > 0 and abs(n16 - n32) <= max(2, 0.05 * n32)
    gap = np.median(runs["bf16"]._lengths) - np.median(runs["f32"]._lengths)
    assert abs(gap) <= 0.1 * np.median(runs["f32"]._lengths)
    assert json.loads((tmp_path / "bf16.json").read_text())["params"]["matmul_dtype"] == "bfloat16"
    assert json.loads((tmp_path / "f32.json").read_text())["params"]["matmul_dtype"] == "float32"
    monkeypatch.setattr("difftract.pipeline.sources.cpu_has_bfloat16", lambda: False)
    assert main(["-q", "track", *common, "--matmul-dtype", "bfloat16", "--out", str(tmp_path / "emulated.trx")]) == 0
    assert "this CPU has no bfloat16 units" in capsys.readouterr().err


def test_track_with_symmetries(weights, subjects, tmp_path, capsys):
    """--symmetries: the same run twice the same tractogram, another than the network alone's, the group in the
    sidecar; refused with a classical rule (exit 2)."""
    d = subjects[1]
    common = [*map(str, scan_args(d)), "--method", "ddtracking", "--weights", str(weights), "--seeds-per-voxel", "1",
              "--min-len-mm", "0", "--seed", "4"]
    runs = {}
    for name, extra in (("alone", []), ("swap", ["--symmetries", "swap"]), ("swap2", ["--symmetries", "swap"])):
        out = tmp_path / f"{name}.trx"
        assert main(["-q", "track", *common, *extra, "--out", str(out)]) == 0
        runs[name] = load_tractogram(out).streamlines
    assert len(runs["swap"]) > 0 and np.array_equal(runs["swap"].get_data(), runs["swap2"].get_data())
    assert len(runs["swap"]) != len(runs["alone"]) or not np.array_equal(runs["swap"].get_data(),
                                                                         runs["alone"].get_data())
    assert json.loads((tmp_path / "swap.json").read_text())["params"]["symmetries"] == "swap"
    assert json.loads((tmp_path / "alone.json").read_text())["params"]["symmetries"] == "none"
    capsys.readouterr()
    refused = tmp_path / "d.trx"
    assert main(["-q", "track", *map(str, scan_args(d)), "--symmetries", "perms", "--out", str(refused)]) == 2
    assert "--symmetries only applies to --method ddtracking" in capsys.readouterr().err
    assert not refused.exists()
    # run hands the group to its track stage, and its equivalent track line repeats it
    run_dir = tmp_path / "run"
    assert main(["-q", "run", str(d), "--out", str(run_dir), "--method", "ddtracking", "--weights", str(weights),
                 "--seeds-per-voxel", "1", "--min-len-mm", "0", "--seed", "4", "--symmetries", "swap",
                 "--device", "cpu"]) == 0
    sidecar = json.loads((run_dir / "tracks.json").read_text())
    assert sidecar["params"]["symmetries"] == "swap" and "--symmetries swap" in json.dumps(sidecar["equivalent"])


def test_fine_tune_with_the_equivariance_penalty(weights, subjects, tmp_path, capsys):
    """--init starts from trained weights (refusing another architecture); --equivariance logs the gap and
    the sidecar records both."""
    out = tmp_path / "tuned.pt"
    one = [a if a != "2" or TINY[i - 1] != "--epochs" else "1" for i, a in enumerate(TINY)]
    assert main(["-q", "train", "ddtracking", *map(str, subjects), "--out", str(out), *one,
                 "--init", str(weights), "--equivariance", "5", "--augment", "--cache-dir", str(tmp_path / "c")]) == 0
    row = json.loads(out.with_name("tuned.metrics.jsonl").read_text().splitlines()[0])
    assert row["train_equivariance_deg"] > 0 and "val_equivariance" in row
    params = json.loads(out.with_name("tuned.json").read_text())["params"]
    assert params["equivariance"] == 5.0 and params["init"] == {"file": "w.pt", "sha256": sha256(weights)}
    # it starts from the weights: at a vanishing learning rate it ends where they are
    still = tmp_path / "still.pt"
    assert main(["-q", "train", "ddtracking", *map(str, subjects), "--out", str(still), *one, "--lr", "1e-12",
                 "--init", str(weights), "--cache-dir", str(tmp_path / "c")]) == 0
    a, b = (torch.load(p, weights_only=True)["state_dict"] for p in (weights, still))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-9) for k in a)
    wider = [a if a != "16" or one[i - 1] != "--gru-hidden" else "32" for i, a in enumerate(one)]
    assert main(["-q", "train", "ddtracking", *map(str, subjects), "--out", str(tmp_path / "x.pt"), *wider,
                 "--init", str(weights)]) == 2
    assert "differs from this run's" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()


def test_resume_with_the_equivariance_penalty_continues_exactly(subjects, tmp_path):
    """The penalty's draws (a symmetry per batch) come from the trainer's generator: a resumed run
    ends where an uninterrupted one does."""
    penalty = ["--equivariance", "5", "--augment", "--cache-dir", str(tmp_path / "c")]
    one = [a if a != "2" or TINY[i - 1] != "--epochs" else "1" for i, a in enumerate(TINY)]
    whole, part = tmp_path / "whole.pt", tmp_path / "part.pt"
    assert main(["-q", "train", "ddtracking", *map(str, subjects), "--out", str(whole), *TINY, *penalty]) == 0
    assert main(["-q", "train", "ddtracking", *map(str, subjects), "--out", str(part), *one, *penalty]) == 0
    assert main(["-q", "train", "ddtracking", *map(str, subjects), "--out", str(part), *TINY, *penalty,
                 "--resume"]) == 0
    a, b = (torch.load(p.with_name(p.stem + ".ckpt.pt"), weights_only=True)["model"] for p in (whole, part))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
