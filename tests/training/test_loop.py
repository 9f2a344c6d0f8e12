"""The shared trainer on a toy regression task: learning, exact resume, determinism,
early stopping and the plateau schedule, refusals, and DDP under torchrun (gloo, CPU)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from difftract.errors import ConfigError, InputError, OutputExistsError
from difftract.training import TrainConfig, load_weights, output_paths, save_weights, train

JOB = Path(__file__).with_name("ddp_job.py")
_spec = importlib.util.spec_from_file_location("difftract_test_ddp_job", JOB)
toy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(toy)

CONFIG = TrainConfig(epochs=4, batch_size=16, lr=3e-3, seed=0, plateau_patience=3, early_stop_patience=8)


def run(out, config=CONFIG, model_seed=0, train_n=128, **kwargs):
    model = toy.make_model(model_seed)
    result = train(model, toy.MSETask(), toy.NoisyLinear(train_n, seed=1),
                   toy.NoisyLinear(48, seed=2, per_epoch=False), config, out, progress=False, **kwargs)
    return model, result


def metrics(out):
    return [json.loads(line) for line in output_paths(out)[2].read_text().splitlines()]


def val_mse(state_dict, n):
    """The validation loss of some weights on the toy validation set, in one batch."""
    model = toy.make_model(7)
    model.load_state_dict(state_dict)
    model.eval()
    val = toy.NoisyLinear(n, seed=2, per_epoch=False)
    with torch.no_grad():
        x, y = (torch.stack(t) for t in zip(*(val[i] for i in range(len(val)))))
        return nn.functional.mse_loss(model(x), y).item()


def test_loss_falls_and_outputs_are_written(tmp_path):
    out = tmp_path / "W.pt"
    lines = []
    _, result = run(out, replace(CONFIG, epochs=5), model_meta={"arch": "mlp", "hidden": 32}, log=lines.append)
    rows = metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5] and len(lines) == 5
    for key in ("train_loss", "val_loss", "lr", "seconds", "train_mae", "val_mae"):
        assert all(key in r for r in rows), key
    assert rows[-1]["val_loss"] < 0.5 * rows[0]["val_loss"]
    assert result.epochs_run == 5 and not result.stopped_early
    assert result.best_val_loss == min(r["val_loss"] for r in rows)

    payload = torch.load(out, weights_only=True)
    assert payload["format"] == "difftract-weights" and payload["meta"] == {"arch": "mlp", "hidden": 32}
    assert payload["train"]["best_epoch"] == result.best_epoch
    assert payload["train"]["config"]["lr"] == CONFIG.lr
    assert val_mse(load_weights(out)["state_dict"], 48) == pytest.approx(result.best_val_loss, rel=1e-5)
    ckpt = torch.load(output_paths(out)[1], weights_only=True)  # the checkpoint needs no pickle either
    assert ckpt["progress"]["epoch"] == 5 and ckpt["progress"]["best_epoch"] == result.best_epoch
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no staging leftovers


def test_interrupted_and_resumed_run_is_bit_identical(tmp_path):
    a, b = tmp_path / "a" / "W.pt", tmp_path / "b" / "W.pt"
    run(a)
    _, partial = run(b, stop_after_epoch=1)
    assert partial.epochs_run == 1 and not b.exists() and output_paths(b)[1].exists()
    _, result = run(b, model_seed=99, resume=True)  # another init: everything comes from the checkpoint
    assert result.epochs_run == 4 and [r["epoch"] for r in metrics(b)] == [1, 2, 3, 4]
    wa, wb = load_weights(a)["state_dict"], load_weights(b)["state_dict"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    oa = torch.load(output_paths(a)[1], weights_only=True)["optimizer"]["state"]
    ob = torch.load(output_paths(b)[1], weights_only=True)["optimizer"]["state"]
    assert oa.keys() == ob.keys()
    assert all(torch.equal(oa[i][k], ob[i][k]) for i in oa for k in oa[i])


def test_resume_refuses_another_setup_but_not_a_newly_derived_domain(tmp_path):
    out = tmp_path / "W.pt"
    run(out, model_meta={"arch": "mlp", "subjects": ["a"]}, stop_after_epoch=1)
    with pytest.raises(ConfigError, match="changed: subjects"):
        run(out, model_meta={"arch": "mlp", "subjects": ["b"]}, resume=True)
    meta = {"arch": "mlp", "subjects": ["a"], "domain": {"bvals": [1000.0, 1000.0]}}   # recorded since
    result = run(out, model_meta=meta, resume=True)[1]
    assert result.epochs_run == 4 and load_weights(out)["meta"]["domain"] == meta["domain"]


def test_same_seed_same_weights_other_seed_differs(tmp_path):
    config = replace(CONFIG, epochs=2)
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        run(tmp_path / f"{name}.pt", replace(config, seed=seed), train_n=64)
        runs[name] = load_weights(tmp_path / f"{name}.pt")["state_dict"]
    assert all(torch.equal(runs["a"][k], runs["b"][k]) for k in runs["a"])
    assert not all(torch.equal(runs["a"][k], runs["c"][k]) for k in runs["a"])


class FlatTask(toy.MSETask):
    """A validation loss that can never improve (training still runs)."""

    def loss(self, model, batch, generator):
        loss, metrics = super().loss(model, batch, generator)
        return (loss if model.training else loss * 0 + 1.0), metrics


def test_early_stopping_and_plateau_schedule(tmp_path):
    out = tmp_path / "W.pt"
    config = replace(CONFIG, epochs=20, batch_size=32, plateau_patience=1, early_stop_patience=3)
    result = train(toy.make_model(), FlatTask(), toy.NoisyLinear(64, seed=1), toy.NoisyLinear(16, seed=2),
                   config, out, progress=False)
    assert result.stopped_early and result.epochs_run == 4 and result.best_epoch == 1
    lrs = [r["lr"] for r in metrics(out)]
    assert lrs[0] == config.lr and lrs[-1] == pytest.approx(config.lr * config.plateau_factor)
    assert load_weights(out)["train"]["epochs_run"] == 4
    # resuming a run that stopped early trains no further
    assert train(toy.make_model(), FlatTask(), toy.NoisyLinear(64, seed=1), toy.NoisyLinear(16, seed=2),
                 config, out, progress=False, resume=True).epochs_run == 4


class NaNTask(toy.MSETask):
    def loss(self, model, batch, generator):
        loss, metrics = super().loss(model, batch, generator)
        return loss * float("nan"), metrics


def test_max_steps_per_epoch(tmp_path):
    out = tmp_path / "W.pt"
    run(out, replace(CONFIG, epochs=2, max_steps_per_epoch=3), train_n=64)
    state = torch.load(output_paths(out)[1], weights_only=True)["optimizer"]["state"]
    assert all(s["step"].item() == 6 for s in state.values())


def test_refusals(tmp_path):
    out = tmp_path / "W.pt"
    small = replace(CONFIG, epochs=1)
    with pytest.raises(InputError, match="W.ckpt.pt"):
        run(out, small, train_n=32, resume=True)
    run(out, small, train_n=32)
    with pytest.raises(OutputExistsError):
        run(out, small, train_n=32)
    run(out, small, train_n=32, force=True)
    with pytest.raises(ConfigError, match="lr"):
        run(out, replace(small, lr=1e-2), train_n=32, resume=True)
    run(out, replace(small, epochs=2), train_n=32, resume=True)  # more epochs is allowed
    assert len(metrics(out)) == 2
    with pytest.raises(ConfigError, match="epoch 1, step 1"):
        train(toy.make_model(), NaNTask(), toy.NoisyLinear(32, seed=1), toy.NoisyLinear(8, seed=2),
              small, tmp_path / "nan.pt", progress=False)
    with pytest.raises(ConfigError):
        TrainConfig(batch_size=0)
    bad = tmp_path / "bad.pt"
    for content in (b"not a torch file", None):
        if content is None:
            torch.save({"state_dict": {}}, bad)
        else:
            bad.write_bytes(content)
        with pytest.raises(InputError, match="bad.pt"):
            load_weights(bad)
    with pytest.raises(InputError, match="missing.pt"):
        load_weights(tmp_path / "missing.pt")
    save_weights(tmp_path / "s.pt", {"w": torch.ones(2)}, {"k": 1}, {}, force=False)
    with pytest.raises(OutputExistsError):
        save_weights(tmp_path / "s.pt", {"w": torch.ones(2)}, {"k": 1}, {}, force=False)


def torchrun(outdir, *args) -> subprocess.Popen:
    """Start the toy job as two DDP processes; :func:`finished` waits for it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(JOB), str(outdir), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finished(proc: subprocess.Popen, outdir):
    try:
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    r0, r1 = (torch.load(outdir / f"final_rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(r0[k], r1[k]) for k in r0)  # the replicas agree
    return output_paths(outdir / "W.pt")


def test_ddp_two_processes_gloo(tmp_path):
    # the interrupted-then-resumed job runs beside the plain one (each --standalone: its own port)
    (tmp_path / "b").mkdir()
    plain, interrupted = torchrun(tmp_path), torchrun(tmp_path / "b", "interrupted")
    try:
        out, ckpt, metrics_path = finished(plain, tmp_path)
        assert out.exists() and ckpt.exists()
        assert len(metrics_path.read_text().splitlines()) == 2
        init = torch.load(tmp_path / "init.pt", weights_only=True)
        weights = load_weights(out)["state_dict"]
        assert not all(torch.equal(init[k], weights[k]) for k in init)
        final = torch.load(tmp_path / "final_rank0.pt", weights_only=True)
        assert all(torch.equal(final[k], weights[k]) for k in final)
        assert len(torch.load(ckpt, weights_only=True)["rng"]) == 2
        # the validation loss is the sample-weighted mean over both ranks' shards (10 + 10, batches 8 + 2)
        assert val_mse(weights, 20) == pytest.approx(load_weights(out)["train"]["best_val_loss"], rel=1e-5)
        # interrupted after epoch 1 and resumed under DDP: the same weights
        resumed = load_weights(finished(interrupted, tmp_path / "b")[0])["state_dict"]
        assert all(torch.equal(weights[k], resumed[k]) for k in weights)
    finally:                    # a failed assertion leaves no job running
        for proc in (plain, interrupted):
            if proc.poll() is None:
                proc.kill()
                proc.wait()