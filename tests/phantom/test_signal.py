"""Schemes, compartment signals, S0 field and Rician noise."""

from __future__ import annotations

import numpy as np
import pytest
from dipy.core.gradients import gradient_table
from dipy.reconst.dti import TensorModel

from difftract.errors import ConfigError
from difftract.phantom.signal import (Tissue, add_rician_noise, bias_field, fibre_signal, isotropic_signal,
                                      make_scheme)


def test_multishell_scheme_counts_norms_and_spread():
    bvals, bvecs = make_scheme((1000, 2000), (30, 60), nb0=3, rng=np.random.default_rng(0))
    assert len(bvals) == 93 and np.sum(bvals == 0) == 3 and np.sum(bvals == 2000) == 60
    np.testing.assert_allclose(np.linalg.norm(bvecs[3:], axis=1), 1, atol=1e-9)
    shell = bvecs[bvals == 2000]
    cos = np.abs(shell @ shell.T) - 2 * np.eye(len(shell))
    assert np.degrees(np.arccos(cos.max())) > 12  # no near-duplicate directions (antipodes count)


@pytest.mark.parametrize("kwargs", [dict(nb0=0), dict(bvals=(30,)), dict(ndirs=5)])
def test_bad_schemes_refused(kwargs):
    with pytest.raises(ConfigError):
        make_scheme(**kwargs)


def test_fibre_signal_matches_the_compartment_equations():
    t = Tissue()
    bvals = np.array([0.0, 1000.0, 1000.0])
    bvecs = np.array([[0, 0, 0], [1.0, 0, 0], [0, 1.0, 0]])
    s = fibre_signal(np.array([[1.0, 0, 0]]), bvals, bvecs, t)[0]
    f_iso = 1 - t.f_intra - t.f_extra
    b = 1000.0
    parallel = t.f_intra * np.exp(-b * t.d_par) + t.f_extra * np.exp(-b * t.d_par) + f_iso * np.exp(-b * t.d_iso)
    perp = t.f_intra + t.f_extra * np.exp(-b * t.d_perp) + f_iso * np.exp(-b * t.d_iso)
    np.testing.assert_allclose(s, [1.0, parallel, perp])
    np.testing.assert_allclose(isotropic_signal(bvals, 1e-3), [1, np.exp(-1), np.exp(-1)])


def test_default_tissue_gives_white_matter_like_tensor():
    bvals, bvecs = make_scheme((1000,), 64, 2)
    s = fibre_signal(np.array([[0.0, 0.6, 0.8]]), bvals, bvecs, Tissue())
    fit = TensorModel(gradient_table(bvals, bvecs=bvecs)).fit(s[0])
    assert 0.7 < fit.fa < 0.8 and 0.7e-3 < fit.md < 0.85e-3
    assert abs(abs(fit.evecs[:, 0] @ [0.0, 0.6, 0.8]) - 1) < 1e-6


def test_bias_field_is_smooth_and_bounded():
    f = bias_field((20, 20, 10), 0.1, np.random.default_rng(0))
    assert 0.9 - 1e-9 <= f.min() and f.max() <= 1.1 + 1e-9 and f.std() > 0.01
    assert np.abs(np.diff(f, axis=0)).max() < 0.05


def test_rician_noise_statistics():
    rng = np.random.default_rng(0)
    zero = add_rician_noise(np.zeros(200_000), 10.0, rng)
    assert zero.mean() == pytest.approx(10.0 * np.sqrt(np.pi / 2), rel=0.01)  # Rayleigh mean
    high = add_rician_noise(np.full(200_000, 500.0), 10.0, rng)
    assert high.mean() == pytest.approx(500.1, abs=0.2) and high.std() == pytest.approx(10.0, rel=0.02)
    np.testing.assert_array_equal(add_rician_noise(np.ones(3), 0.0, rng), np.ones(3))
