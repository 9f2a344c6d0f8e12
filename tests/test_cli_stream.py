"""``difftract train ... --stream``: training on subjects simulated on the fly (tiny phantoms and models)."""

from __future__ import annotations

import json

import pytest
import torch

from difftract.cli import main
from difftract.phantom.splits import training_seed, validation_seed
from difftract.weights import sha256

PHANTOM = ["--phantom", "snr=null", "--phantom", "streamlines_per_bundle=6"]
DD_TINY = ["--gru-hidden", "16", "--z-dim", "8", "--v-dim", "8", "--conv-channels", "4", "--denoiser-width", "8",
           "--samples-per-epoch", "16", "--val-samples", "8", "--batch-size", "8", "--window", "12", "--device", "cpu",
           "--stream", "crossing", *PHANTOM, "--subjects-per-epoch", "2"]


def rows(out):
    return [json.loads(line) for line in out.with_name(out.stem + ".metrics.jsonl").read_text().splitlines()]


def test_streamed_ddtracking_resumes_exactly(tmp_path):
    """Interrupted after epoch 1 and resumed with an empty pool: the same weights as one run.

    The uninterrupted run simulates in the training process, the first part in a background
    worker: a subject does not depend on where it is made.
    """
    full, part = tmp_path / "full.pt", tmp_path / "part.pt"
    assert main(["-q", "train", "ddtracking", "--out", str(full), "--epochs", "2", *DD_TINY,
                 "--stream-workers", "0"]) == 0
    assert main(["-q", "train", "ddtracking", "--out", str(part), "--epochs", "1", *DD_TINY]) == 0
    assert main(["-q", "train", "ddtracking", "--out", str(part), "--epochs", "2", *DD_TINY, "--resume",
                 "--pool-dir", str(tmp_path / "empty"), "--stream-workers", "0"]) == 0   # all simulated again
    a = torch.load(tmp_path / "full.ckpt.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "part.ckpt.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    first, second = rows(full)
    assert first["train_subject_seeds"] == [training_seed(0, k) for k in (0, 1)]
    assert second["train_subject_seeds"] == [training_seed(0, k) for k in (2, 3)]   # fresh subjects
    assert first["val_subject_seeds"] == second["val_subject_seeds"] == [validation_seed(0, 0)]
    assert rows(part) == [{**r, "seconds": p["seconds"]} for r, p in zip(rows(full), rows(part))]
    side = json.loads(full.with_suffix(".json").read_text())
    assert side["weights_sha256"] == sha256(full)
    assert side["params"]["stream"]["recipe"]["phantom"]["preset"] == "crossing"
    domain = torch.load(full, weights_only=True)["meta"]["domain"]     # the stream's, recorded by open_datasets
    assert domain["presets"] == ["crossing"] and domain["ndirs"] == [32, 32] and domain["bvals"] == [1000.0, 1000.0]
    assert side["stream"]["subjects_simulated"] == 5 and side["stream"]["seconds_per_subject"] > 0
    assert len(list((tmp_path / "full.stream").glob("*.npz"))) <= 2 * 2 + 1     # the default pool bound
    # another stream is another data setup: no resume
    assert main(["-q", "train", "ddtracking", "--out", str(part), "--epochs", "3", *DD_TINY, "--resume",
                 "--stream-base", "1"]) == 2


def test_streamed_qcgdti(tmp_path):
    out = tmp_path / "q.pt"
    assert main(["-q", "train", "qcgdti", "--out", str(out), "--stream", "crossing", *PHANTOM,
                 "--phantom", "bvals=[1000]", "--phantom", "ndirs=64", "--phantom", "nb0=1",
                 "--subjects-per-epoch", "2", "--widths", "4,8", "--patch", "16", "--epochs", "1",
                 "--samples-per-epoch", "4", "--val-samples", "2", "--batch-size", "2", "--device", "cpu",
                 "--stream-workers", "0", "--target", "shell"]) == 0
    (row,) = rows(out)
    assert len(row["train_subject_seeds"]) == 2 and row["val_subject_seeds"] == [validation_seed(0, 0)]
    meta = torch.load(out, weights_only=True)["meta"]
    assert meta["target"] == "shell" and "interpolated in b" in meta["reference"]
    assert meta["stream"]["recipe"]["phantom"]["ndirs"] == 64 and meta["val_subjects"] == ["seed1100000000"]
    assert meta["domain"]["ndirs"] == [64, 64] and meta["domain"]["presets"] == ["crossing"]


@pytest.mark.parametrize("args, message", [
    ([], "SUBJECT_DIRs or --stream"),
    (["somedir", "--stream", "crossing"], "SUBJECT_DIRs or --stream"),
    (["--stream", "crossing", "--phantom", "seed=3"], "unknown phantom setting(s) seed"),
    (["--stream", "crossing", "--phantom", "snr"], "KEY=VALUE"),
    (["--stream", "crossing", "--subjects-per-epoch", "0"], "subjects per epoch >= 1"),
    (["--stream", "no-such-preset"], "unknown phantom preset 'no-such-preset'"),
    (["--stream", "crossing", "--pool-size", "0"], "--pool-size must be at least 1"),
    (["--stream", "crossing", "--cache-dir", "c"], "--cache-dir is for SUBJECT_DIRs"),
    (["somedir", "--stream-workers", "2", "--epochs-per-subject", "3"], "--epochs-per-subject, --stream-workers need --stream"),
])
def test_stream_refusals(tmp_path, capsys, args, message):
    assert main(["train", "ddtracking", "--out", str(tmp_path / "w.pt"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "w.pt").exists()


@pytest.mark.slow
def test_streamed_ddp_ranks_draw_their_own_subjects(tmp_path, torchrun_train):
    """Two processes (gloo, CPU), each with its own worker: every rank trains on its own subjects."""
    out = tmp_path / "ddp.pt"
    torchrun_train("ddtracking", "--epochs", "1", *DD_TINY, out=out, epochs=1)
    (row,) = rows(out)
    rank0, rank1 = row["train_subject_seeds"]
    assert rank0 == [training_seed(0, k, 0, 2) for k in (0, 1)] and rank1 == [training_seed(0, k, 1, 2) for k in (0, 1)]
    assert not set(rank0) & set(rank1)
