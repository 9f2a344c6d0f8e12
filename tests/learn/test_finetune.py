"""Demonstration 2 in small: the streamline loss reaches QCG-DTI's weights and trains under the shared trainer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from difftract.errors import ConfigError, InputError
from difftract.learn.finetune import FinetuneConfig, StreamlineTask, SubjectSamples, prepare_streamline_subject
from difftract.models.qcgdti.model import QCGConfig, build_model
from difftract.models.qcgdti.predict import load_qcgdti
from difftract.phantom import save_phantom
from difftract.training.loop import TrainConfig, train


@pytest.fixture(scope="module")
def subject(tmp_path_factory, crossing_noisefree):
    d = save_phantom(crossing_noisefree, tmp_path_factory.mktemp("ft") / "xing")
    return prepare_streamline_subject(d, pool_size=4, seed=0)


def _model():
    torch.manual_seed(0)
    return build_model(QCGConfig(widths=(4, 8, 8), qcf_hidden=8))


def test_samples_name_the_subjects_they_draw_from(subject):
    subjects = [subject, subject, subject]
    val = SubjectSamples(subjects, 4, use=[2], scheme="fixed", seed=1, per_epoch=False)
    assert [val[i]["subject"] for i in range(4)] == [2, 2, 2, 2]
    assert val[0]["six"] == list(subject.qcg.fixed.indices)
    train_set = SubjectSamples(subjects, 4, use=[0, 1])
    assert [train_set[i]["subject"] for i in range(4)] == [0, 1, 0, 1]
    first = [train_set[i] for i in range(4)]
    train_set.set_epoch(1)
    assert [train_set[i] for i in range(4)] != first


def test_the_streamline_term_alone_reaches_every_layer(subject):
    model = _model()
    task = StreamlineTask([subject], FinetuneConfig(voxel_weight=0.0, streamline_weight=1.0, seeds=16, n_steps=12,
                                                   checkpoint_every=6))
    batch = task.collate([SubjectSamples([subject], 1)[0]])
    loss, metrics = task.loss(model, batch)
    assert torch.isfinite(loss) and metrics["point_mm"] > 0 and "voxel_rmse_um2_ms" in metrics
    loss.backward()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in convs)


def test_finetuning_runs_under_the_trainer_and_writes_loadable_weights(subject, tmp_path):
    model = _model()
    task = StreamlineTask([subject], FinetuneConfig(seeds=8, n_steps=10))
    out = tmp_path / "ft.pt"
    meta = {"model": "qcgdti", "config": model.config.as_dict(), "patch": 32, **task.meta()}
    result = train(model, task, SubjectSamples([subject], 2), SubjectSamples([subject], 1, scheme="fixed", seed=1,
                                                                              per_epoch=False),
                   TrainConfig(epochs=2, batch_size=1, lr=1e-3), out, device="cpu", model_meta=meta, progress=False)
    assert result.epochs_run == 2 and all(np.isfinite(r["val_loss"]) for r in result.history)
    assert "train_point_mm" in result.history[0]
    loaded, info = load_qcgdti(out)
    assert info["finetune"]["seeds"] == 8


def test_refuses_bad_settings(tmp_path, subject, crossing_noisefree):
    with pytest.raises(ConfigError, match="weights"):
        FinetuneConfig(voxel_weight=0.0, streamline_weight=0.0)
    with pytest.raises(ConfigError, match="scheme"):
        SubjectSamples([subject], 2, scheme="odd")
    with pytest.raises(ConfigError, match="use"):
        SubjectSamples([subject], 2, use=[1])
    d = save_phantom(crossing_noisefree, tmp_path / "no_wm")
    (d / "wm.nii.gz").unlink()
    with pytest.raises(InputError, match="wm.nii.gz: not found"):
        prepare_streamline_subject(d)
