"""Shipped weights: checksums verified, tampering refused, the QCG-DTI weights load and run."""

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
