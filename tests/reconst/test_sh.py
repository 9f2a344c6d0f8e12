"""SH fits of the b0-normalised signal: sf_to_sh's numbers, normalisation, shells, refusals."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch
from dipy.core.gradients import gradient_table
from dipy.core.sphere import Sphere
from dipy.reconst.shm import sf_to_sh, sh_to_sf

from difftract.errors import ConfigError
from difftract.reconst.sh import SHModel, check_lmax, lmax_from_ncoeffs, n_coeffs, normalize_signal, sh_basis


def reference(data, mask, model, gtab):
    rows = data[mask]
    b0 = rows[:, model.b0_index].mean(axis=1, keepdims=True)
    signal = np.where(b0 > 0, np.minimum(rows[:, model.dw_index], b0) / np.where(b0 > 0, b0, 1), 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sf_to_sh(signal, Sphere(xyz=gtab.bvecs[model.dw_index]), sh_order_max=model.lmax,
                        basis_type="descoteaux07", legacy=model.legacy, smooth=model.smooth)


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("lmax", [2, 4, 6, 8])
def test_matches_sf_to_sh(noisy64, lmax, legacy):
    data, mask, gtab = noisy64["data"], noisy64["mask"], noisy64["gtab"]
    for smooth in (0.006, 0.0):
        model = SHModel(gtab, lmax=lmax, legacy=legacy, smooth=smooth)
        fit = model.fit(data, mask)
        ref = reference(data, mask, model, gtab)
        ours = fit.coeffs[mask]
        assert ours.shape[-1] == n_coeffs(lmax)
        assert np.max(np.abs(ours - ref) / np.abs(ref).max(-1, keepdims=True)) < 1e-10
        assert np.all(fit.coeffs[~mask] == 0)


def test_float32_path_is_close(noisy64):
    data, mask, gtab = noisy64["data"], noisy64["mask"], noisy64["gtab"]
    model = SHModel(gtab, lmax=8)
    f64, f32 = model.fit(data, mask), model.fit(data, mask, dtype="float32", chunk_size=1000)
    assert f32.coeffs.dtype == np.float32
    np.testing.assert_allclose(f32.coeffs, f64.coeffs, atol=1e-5)


def test_normalisation_as_designed():
    signal = torch.tensor([[100.0, 300.0, 50.0, 400.0],   # two b0s averaged: 200; DW 400 clipped to 1
                           [0.0, 0.0, 10.0, 20.0],        # b0 = 0: all zero
                           [-5.0, 5.0, 1.0, 1.0]], dtype=torch.float64)  # mean b0 0: zero
    out = normalize_signal(signal, torch.tensor([0, 1]), torch.tensor([2, 3]))
    np.testing.assert_allclose(out.numpy(), [[0.25, 1.0], [0.0, 0.0], [0.0, 0.0]])


def test_fit_reproduces_a_smooth_signal():
    """Noise-free single fibre: lmax 8 SH represent the normalised signal to well under 1%."""
    rng = np.random.default_rng(0)
    g = rng.normal(size=(90, 3))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    gtab = gradient_table(np.r_[0.0, np.full(90, 1000.0)], bvecs=np.vstack([[0, 0, 0], g]))
    fibre = np.array([0.6, 0.8, 0.0])
    signal = np.exp(-1000 * (0.4e-3 + 1.3e-3 * (g @ fibre) ** 2))
    data = np.r_[1.0, signal][None] * 500
    fit = SHModel(gtab, lmax=8, smooth=0.0).fit(data)
    np.testing.assert_allclose(fit.odf(g)[0], signal, atol=2e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_allclose(fit.odf(g)[0], sh_to_sf(fit.coeffs[0], Sphere(xyz=g), sh_order_max=8,
                                                           basis_type="descoteaux07", legacy=False), atol=1e-12)


def test_multishell_picks_highest_shell_or_the_one_asked(caplog):
    rng = np.random.default_rng(1)
    g = rng.normal(size=(60, 3))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    bvals = np.r_[0.0, 5.0, np.full(30, 1000.0), np.full(30, 2990.0)]
    bvals[2] = 1010.0  # within the shell tolerance
    gtab = gradient_table(bvals, bvecs=np.vstack([[0, 0, 0], [0, 0, 0], g]))
    with caplog.at_level(logging.INFO, logger="difftract"):
        model = SHModel(gtab, lmax=6)
    assert model.shell == 2990 and len(model.dw_index) == 30 and "highest shell" in caplog.text
    assert set(model.b0_index) == {0, 1}
    low = SHModel(gtab, lmax=6, shell=1000)
    assert len(low.dw_index) == 30 and low.params["shell"] == 1000
    with pytest.raises(ConfigError, match="no volumes with b = 2000"):
        SHModel(gtab, shell=2000)


def test_refusals():
    g = np.eye(3)
    no_b0 = gradient_table(np.full(3, 1000.0), bvecs=g)
    with pytest.raises(ConfigError, match="no b0"):
        SHModel(no_b0, lmax=2)
    few = gradient_table(np.r_[0.0, np.full(3, 1000.0)], bvecs=np.vstack([[0, 0, 0], g]))
    with pytest.raises(ConfigError, match="needs 6 directions"):
        SHModel(few, lmax=2, smooth=0.0)
    with pytest.raises(ConfigError, match="even"):
        check_lmax(5)
    with pytest.raises(ConfigError, match="lambda"):
        SHModel(few, lmax=2, smooth=-1.0)


def test_coefficient_counts():
    assert [n_coeffs(l) for l in (0, 2, 4, 6, 8)] == [1, 6, 15, 28, 45]
    assert [lmax_from_ncoeffs(n) for n in (1, 6, 15, 28, 45)] == [0, 2, 4, 6, 8]
    with pytest.raises(ValueError):
        lmax_from_ncoeffs(10)
    B, l_values = sh_basis(np.eye(3), 4, legacy=False)
    assert B.shape == (3, 15) and list(l_values[:6]) == [0, 2, 2, 2, 2, 2]


def test_gfa_matches_dipy():
    from dipy.reconst.shm import _gfa_sh

    from difftract.reconst.sh import gfa

    coeffs = np.random.default_rng(0).normal(size=(40, 28))
    coeffs[0] = 0
    np.testing.assert_allclose(gfa(coeffs), _gfa_sh(coeffs), atol=1e-14)
    assert gfa(coeffs)[0] == 0


def test_volume_count_and_nonfinite_lambda_refused(noisy64):
    gtab = noisy64["gtab"]
    with pytest.raises(ConfigError, match="volumes"):
        SHModel(gtab, lmax=4).fit(noisy64["data"][..., :-1])
    for bad in (np.nan, np.inf):
        with pytest.raises(ConfigError, match="lambda"):
            SHModel(gtab, lmax=4, smooth=bad)


def test_a_nonfinite_volume_outside_the_shell_leaves_the_fit_alone():
    """The fit multiplies every volume (zero weights outside the shell); NaN or Inf there must not leak in."""
    from dipy.core.gradients import gradient_table

    from difftract.reconst.sh import SHModel

    rng = np.random.default_rng(3)
    dirs = rng.normal(size=(60, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    bvals = np.r_[0, 0, np.full(30, 1000.0), np.full(30, 2000.0)]
    bvecs = np.r_[np.zeros((2, 3)), dirs]
    gtab = gradient_table(bvals, bvecs=bvecs)
    data = rng.uniform(100, 200, size=(4, 1, 1, len(bvals)))
    data[..., :2] = 300
    model = SHModel(gtab, lmax=4, shell=1000)
    clean = model.fit(data).coeffs
    spoiled = data.copy()
    spoiled[0, 0, 0, -1], spoiled[1, 0, 0, -2] = np.nan, np.inf          # b = 2000 volumes
    out = model.fit(spoiled).coeffs
    np.testing.assert_allclose(out, clean, rtol=1e-12, atol=1e-15)
    spoiled[2, 0, 0, 5] = np.nan                                        # in the shell: NaN, as before
    assert np.isnan(model.fit(spoiled).coeffs[2]).all()
