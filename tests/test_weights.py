"""Shipped weights: checksums verified, tampering refused, the QCG-DTI and DDTracking weights load and run."""

from __future__ import annotations

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
    fit = model.fit(p.data, p.bvals, p.bvecs, p.mask, fixed_six(p.bvals, p.bvecs))
    assert np.isfinite(fit.fa).all() and 0 < np.median(fit.fa[p.wm]) <= 1
    assert np.median(fit.md[p.mask]) == pytest.approx(0.8e-3, rel=0.3)


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
