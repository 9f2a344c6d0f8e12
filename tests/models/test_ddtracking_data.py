"""DDTracking training data: resampling, subjects and their cache, samples, the task."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from difftract.models.ddtracking.train import split_validation
from difftract.errors import ConfigError, InputError
from difftract.models.ddtracking.data import (DDSubject, DDTrackingTask, StreamlineDataset, collate, prepare_subject,
                                              resample)
from difftract.models.ddtracking.features import neighbourhood
from difftract.models.ddtracking.model import DDTracking, DDTrackingConfig
from difftract.phantom import PhantomConfig, save_phantom, simulate

from .test_ddtracking_model import TINY


@pytest.fixture(scope="module")
def subject_dir(tmp_path_factory):
    p = simulate(PhantomConfig(preset="crossing", seed=3, ndirs=32, streamlines_per_bundle=60))
    return save_phantom(p, tmp_path_factory.mktemp("dd") / "crossing")


def test_resample_spacing_and_ends():
    t = np.linspace(0, np.pi / 2, 200)
    arc = np.stack([10 * np.cos(t), 10 * np.sin(t), np.zeros_like(t)], axis=1)     # length ~ 15.7
    r = resample(arc, 1.0)
    assert len(r) == 16
    np.testing.assert_allclose(r[0], arc[0], atol=1e-6)
    steps = np.linalg.norm(np.diff(r, axis=0), axis=1)
    assert np.all(np.abs(steps - 1.0) < 0.01)     # chords of unit arcs on a radius-10 circle


def test_prepare_subject_and_cache(subject_dir, tmp_path):
    s = prepare_subject(subject_dir, step=1.0, cache_dir=tmp_path)
    assert s.sh.shape[-1] == 28 and s.sh.dtype == torch.float32
    assert all(np.allclose(np.linalg.norm(np.diff(x, axis=0), axis=1), 1.0, atol=0.05) for x in s.streamlines[:20])
    assert len(list(tmp_path.glob("*.npz"))) == 1
    again = prepare_subject(subject_dir, step=1.0, cache_dir=tmp_path)
    assert torch.equal(again.sh, s.sh) and len(again.streamlines) == len(s.streamlines)
    assert all(np.array_equal(a, b) for a, b in zip(again.streamlines, s.streamlines))
    prepare_subject(subject_dir, step=0.5, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 2        # another step, another cache entry


def test_subject_without_tractogram(tmp_path):
    with pytest.raises(InputError, match="no reference tractogram"):
        prepare_subject(tmp_path)


def test_samples(subject_dir):
    s = prepare_subject(subject_dir)
    ds = StreamlineDataset([s], 8, seed=4, window=10, jitter=0.0, seed_angle=0.0)
    a, b = ds[3], ds[3]
    assert all(torch.equal(a[k], b[k]) for k in a)                        # pure in (seed, epoch, index)
    ds.set_epoch(1)
    assert not torch.equal(ds[3]["target"], a["target"]) or len(s.streamlines) == 1
    x = ds[0]
    T = len(x["target"])
    assert T <= 10 and x["patches"].shape == (T, 28, 3, 3, 3)
    torch.testing.assert_close(x["target"].norm(dim=1), torch.ones(T))
    torch.testing.assert_close(x["prev"][1:], x["target"][:-1])           # without noise: the previous target
    assert torch.dot(x["prev"][0], x["target"][0]) > 0.99                # the clean tangent at the start
    # without jitter, the inputs are streamline points: centre samples equal the SH there
    batch = collate([ds[i] for i in range(4)])
    assert batch["lengths"].sum() == len(batch["target"]) == len(batch["patches"])
    with pytest.raises(ConfigError):
        StreamlineDataset([s], 8, window=0)


def test_sample_noise():
    """Offsets: AR(1) with the asked deviation and correlation; moves as prev; a turned first direction."""
    line = np.stack([np.arange(400.0), np.full(400, 5.0), np.full(400, 5.0)], axis=1).astype(np.float32)
    sub = DDSubject("line", torch.zeros(12, 12, 12, 28), [line])
    ds = StreamlineDataset([sub], 40, seed=1, window=300, jitter=0.3, jitter_corr=0.7, seed_angle=15.0)
    offsets = np.concatenate([ds._offsets(np.random.default_rng(i), 300) for i in range(20)])
    assert abs(offsets.std() - 0.3) < 0.02
    lag1 = np.mean([np.corrcoef(o[:-1, 0], o[1:, 0])[0, 1]
                    for o in (ds._offsets(np.random.default_rng(100 + i), 300) for i in range(20))])
    assert abs(lag1 - 0.7) < 0.05
    firsts = []
    for i in range(40):
        x = ds[i]
        first = x["prev"][0]
        tangent = torch.tensor([1.0, 0, 0]) if torch.dot(first, torch.tensor([1.0, 0, 0])) > 0 else torch.tensor([-1.0, 0, 0])
        firsts.append(float(torch.rad2deg(torch.acos(torch.dot(first, tangent).clamp(-1, 1)))))
        moves = x["prev"][1:]
        assert torch.allclose(moves.norm(dim=1), torch.ones(len(moves)))
        along = (moves * tangent).sum(1)
        assert along.mean() > 0.9 and (along > 0.5).float().mean() > 0.98   # moves go along the line, with noise
        # targets lead back to the line: they point towards the clean next point, one step on
        assert (x["target"] * tangent).sum(1).min() > 0.5
    assert 5 < np.mean(firsts) < 20                                    # |N(0, 15 deg)| has mean 12 deg


def test_sample_features_are_the_neighbourhoods_of_the_points(subject_dir):
    s = prepare_subject(subject_dir)
    line = s.streamlines[0]
    ds = StreamlineDataset([DDSubject("x", s.sh, [line])], 1, window=1000, jitter=0.0)
    x = ds[0]
    forward = torch.from_numpy(line[:-1].copy())
    backward = torch.from_numpy(line[::-1][:-1].copy())
    assert any(torch.allclose(x["patches"], neighbourhood(s.sh, p)) for p in (forward, backward))


def test_split_validation(subject_dir):
    s = prepare_subject(subject_dir)
    train, val = split_validation([s], 1, seed=0)
    n_t, n_v = len(train[0].streamlines), len(val[0].streamlines)
    assert n_t + n_v == len(s.streamlines) and n_v == max(1, len(s.streamlines) // 10)
    a, b = split_validation([s, s, s], 1, seed=0)
    assert len(a) == 2 and len(b) == 1
    with pytest.raises(ConfigError):
        split_validation([s, s], 2, seed=0)


@pytest.mark.parametrize("variant", ["full", "spatial_temporal"])
def test_task_learns(subject_dir, variant):
    """A few dozen steps on one subject: the loss and the angle to the true direction fall."""
    torch.manual_seed(0)
    s = prepare_subject(subject_dir)
    model = DDTracking(DDTrackingConfig(variant=variant, **{**TINY, "gru_hidden": 32}))
    task = DDTrackingTask()
    ds = StreamlineDataset([s], 16, seed=0, window=16)
    batch = collate([ds[i] for i in range(16)])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)

    def evaluate():
        with torch.no_grad():
            losses = [task.loss(model, batch, torch.Generator().manual_seed(i)) for i in range(4)]
        return np.mean([float(l) for l, _ in losses]), np.mean([m["angle_deg"] for _, m in losses])

    loss0, angle0 = evaluate()
    for _ in range(60):
        loss, _ = task.loss(model, batch, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    loss1, angle1 = evaluate()
    assert loss1 < 0.7 * loss0 and angle1 < angle0 - 20, (loss0, loss1, angle0, angle1)


def test_fodf_input_scale_and_choice(subject_dir):
    """The fODF input is CSD's, times 2 sqrt(pi): its first coefficient, the fODF's integral, is about 1 in
    white matter, like the signal SH's; :func:`input_sh` picks by the network's ``input``."""
    from difftract.io.dwi import load_subject
    from difftract.io.nifti import load_nifti
    from difftract.models.ddtracking.data import FODF_SCALE, fodf_sh, input_sh, signal_sh
    from difftract.reconst.csd import CsdModel

    dwi = load_subject(subject_dir)
    fod = fodf_sh(dwi)
    wm = np.asarray(load_nifti(subject_dir / "wm.nii.gz").dataobj) > 0
    assert fod.shape == (*dwi.shape, 28) and fod.dtype == np.float32
    assert abs(float(fod[wm, 0].mean()) - 1.0) < 0.15
    assert not fod[~dwi.mask].any()
    csd = CsdModel(dwi.gtab, lmax=6).fit(dwi.signal, dwi.mask, dtype="float32", progress=False).coeffs
    np.testing.assert_allclose(fod, csd * FODF_SCALE, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(input_sh(dwi, "fodf"), fod)
    np.testing.assert_array_equal(input_sh(dwi, "signal"), signal_sh(dwi))
    with pytest.raises(ConfigError, match="unknown DDTracking input"):
        input_sh(dwi, "odf")


def test_input_in_config():
    assert "input" not in DDTrackingConfig().as_dict()          # as written before the option: old checkpoints resume
    assert DDTrackingConfig(input="fodf").as_dict()["input"] == "fodf"
    with pytest.raises(ConfigError, match="unknown DDTracking input"):
        DDTrackingConfig(input="odf")
