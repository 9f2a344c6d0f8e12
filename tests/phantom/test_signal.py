"""Schemes, compartment signals, S0 field, Rician and non-central chi noise."""

from __future__ import annotations

import numpy as np
import pytest
from dipy.core.gradients import gradient_table
from dipy.reconst.dti import TensorModel

from difftract.errors import ConfigError
from scipy import stats

from difftract.phantom.randomize import FibreSamples
from difftract.phantom.signal import (Tissue, add_coil_noise, add_rician_noise, bias_field, fibre_signal,
                                      isotropic_signal, make_scheme)


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


def test_lattice_scheme_is_even_for_many_directions():
    bvals, bvecs = make_scheme((1000, 3000), (150, 150), nb0=1, rng=np.random.default_rng(0), start="lattice")
    for b in (1000, 3000):
        shell = bvecs[bvals == b]
        cos = np.abs(shell @ shell.T) - 2 * np.eye(len(shell))
        assert np.degrees(np.arccos(cos.max())) > 9  # random starts reach ~7 degrees after 1000 steps
    other = make_scheme((1000,), 30, 1, rng=np.random.default_rng(1), start="lattice")[1]
    assert not np.allclose(other[1:], bvecs[1:31])  # each draw is rotated differently


def test_per_sample_parameters_match_one_tissue_per_sample():
    bvals, bvecs = make_scheme((1000, 2500), 20, 2)
    dirs = np.random.default_rng(0).normal(size=(3, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    fibre = FibreSamples(d_par=np.array([1.5e-3, 2e-3, 2.2e-3]), d_perp=np.array([0.3e-3, 0.6e-3, 1e-3]),
                         f_intra=np.array([0.4, 0.6, 0.8]), f_extra=np.array([0.6, 0.4, 0.2]),
                         f_free=np.array([0.0, 0.1, 0.3]), kappa=np.ones(3), d_free=3e-3)
    together = fibre_signal(dirs, bvals, bvecs, fibre)
    for k in range(3):
        t = Tissue(d_par=fibre.d_par[k], d_perp=fibre.d_perp[k], f_intra=fibre.f_intra[k], f_extra=fibre.f_extra[k])
        alone = (1 - fibre.f_free[k]) * fibre_signal(dirs[k:k + 1], bvals, bvecs, t)[0] \
            + fibre.f_free[k] * isotropic_signal(bvals, 3e-3)
        np.testing.assert_allclose(together[k], alone, rtol=1e-12)


@pytest.mark.parametrize("coils,snr", [(1, 2.0), (4, 1.5), (32, 5.0), (8, 0.0)])
def test_coil_noise_is_noncentral_chi(coils, snr):
    # M / sigma is the square root of a non-central chi-square with 2 coils degrees of freedom
    # and non-centrality snr^2: check E[M] and E[M^2] to 5 standard errors of the sample mean
    sigma, n = 10.0, 200_000
    m = add_coil_noise(np.full(n, snr * sigma), sigma, coils, np.random.default_rng(coils))
    law = stats.ncx2(2 * coils, snr**2) if snr > 0 else stats.chi2(2 * coils)
    mean_m = sigma * law.expect(np.sqrt)
    mean_m2 = sigma**2 * (2 * coils + snr**2)
    var_m2 = sigma**4 * (4 * coils + 4 * snr**2)
    assert abs(m.mean() - mean_m) < 5 * np.sqrt((mean_m2 - mean_m**2) / n)
    assert abs((m**2).mean() - mean_m2) < 5 * np.sqrt(var_m2 / n)


def test_coil_noise_keeps_the_stated_snr_at_high_signal_and_is_chunked():
    sigma = 10.0
    m = add_coil_noise(np.full((300, 400), 100 * sigma), sigma, 16, np.random.default_rng(0), chunk=7_000)
    assert m.shape == (300, 400)
    # at SNR 100 the magnitude's std is sigma (to 1 / (2 * 120_000)^0.5 ~ 0.2%, plus O(1/SNR^2))
    assert m.std() == pytest.approx(sigma, rel=0.02)
    np.testing.assert_array_equal(add_coil_noise(np.ones(3), 0.0, 4, np.random.default_rng(0)), np.ones(3))
    with pytest.raises(ConfigError):
        add_coil_noise(np.ones(3), 1.0, 0, np.random.default_rng(0))
