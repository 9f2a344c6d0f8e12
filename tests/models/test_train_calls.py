"""``train_qcgdti`` and ``train_ddtracking`` called from Python: the CLI's weights and sidecar, without argparse."""

from __future__ import annotations

import io
import json

import pytest
import torch

from difftract.errors import ConfigError
from difftract.models.ddtracking.model import DDTrackingConfig
from difftract.models.ddtracking.train import DDTrackingTrainOptions, train_ddtracking
from difftract.models.qcgdti.model import QCGConfig
from difftract.models.qcgdti.train import QCGTrainOptions, train_qcgdti
from difftract.phantom import PhantomConfig, save_phantom, simulate
from difftract.pipeline import Console
from difftract.training.stream import StreamOptions


def same_weights(a, b) -> bool:
    x, y = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    return x["meta"] == y["meta"] and x["state_dict"].keys() == y["state_dict"].keys() and \
        all(torch.equal(x["state_dict"][k], y["state_dict"][k]) for k in x["state_dict"])


def sidecar_params(weights) -> dict:
    return json.loads(weights.with_suffix(".json").read_text())["params"]


def test_train_qcgdti_on_a_stream_is_the_cli(cli, tmp_path):
    phantom = {"snr": None, "streamlines_per_bundle": 6, "bvals": [1000], "ndirs": 64, "nb0": 1}
    options = QCGTrainOptions(model=QCGConfig(widths=(4, 8)), patch=16, epochs=1, samples_per_epoch=4,
                              val_samples=2, batch_size=2, device="cpu")
    # one pool for both runs: the CLI's trains on the subjects the first simulated (a subject is its seed)
    stream = StreamOptions("crossing", phantom=phantom, subjects_per_epoch=1, workers=0,
                           pool_dir=tmp_path / "pool")
    printed = io.StringIO()
    result = train_qcgdti(tmp_path / "lib.pt", options=options, stream=stream, console=Console(stream=printed))
    res = cli("-q", "train", "qcgdti", "--out", tmp_path / "cli.pt", "--stream", "crossing",
              *[w for k, v in phantom.items() for w in ("--phantom", f"{k}={json.dumps(v)}")],
              "--subjects-per-epoch", "1", "--stream-workers", "0", "--pool-dir", tmp_path / "pool",
              "--widths", "4,8", "--patch", "16", "--epochs", "1", "--samples-per-epoch", "4", "--val-samples", "2", "--batch-size", "2", "--device", "cpu")
    assert res.returncode == 0, res.stderr
    assert same_weights(tmp_path / "lib.pt", tmp_path / "cli.pt")
    assert sidecar_params(tmp_path / "lib.pt") == sidecar_params(tmp_path / "cli.pt")
    assert result.epochs_run == 1 and printed.getvalue().startswith("QCG-DTI full: 1 epochs")
    with pytest.raises(ConfigError, match="SUBJECT_DIRs or --stream"):     # neither folders nor a stream
        train_qcgdti(tmp_path / "none.pt", options=options, console=Console(quiet=True))


def test_train_ddtracking_on_folders_is_the_cli(cli, tmp_path):
    subjects = [save_phantom(simulate(PhantomConfig(preset="crossing", seed=s, ndirs=16, nb0=1,
                                                    streamlines_per_bundle=10)), tmp_path / f"s{s}") for s in (1, 2)]
    options = DDTrackingTrainOptions(model=DDTrackingConfig(gru_hidden=16, z_dim=8, v_dim=8, conv_channels=4,
                                                            denoiser_width=8),
                                     window=12, epochs=1, samples_per_epoch=8, val_samples=4, batch_size=4,
                                     device="cpu", cache_dir=tmp_path / "cache")
    result = train_ddtracking(tmp_path / "lib.pt", subjects, options, console=Console(quiet=True))
    res = cli("-q", "train", "ddtracking", *subjects, "--out", tmp_path / "cli.pt", "--gru-hidden", "16",
              "--z-dim", "8", "--v-dim", "8", "--conv-channels", "4", "--denoiser-width", "8", "--window", "12",
              "--epochs", "1", "--samples-per-epoch", "8", "--val-samples", "4", "--batch-size", "4",
              "--device", "cpu", "--cache-dir", tmp_path / "cache")
    assert res.returncode == 0, res.stderr
    assert same_weights(tmp_path / "lib.pt", tmp_path / "cli.pt")
    assert sidecar_params(tmp_path / "lib.pt") == sidecar_params(tmp_path / "cli.pt")
    assert result.epochs_run == 1
    assert torch.load(tmp_path / "lib.pt", weights_only=True)["meta"]["val_subjects"] == ["s2"]
    with pytest.raises(ConfigError, match="--cache-dir is for SUBJECT_DIRs"):
        train_ddtracking(tmp_path / "s.pt", options=options, stream=StreamOptions("crossing"))
