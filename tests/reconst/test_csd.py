"""CSD: same fODF coefficients as DIPY's ConstrainedSphericalDeconvModel, batched."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch
from dipy.core.gradients import gradient_table
from dipy.reconst.csdeconv import ConstrainedSphericalDeconvModel, response_from_mask_ssst
from dipy.reconst.shm import convert_sh_from_legacy

from difftract.errors import ConfigError
from difftract.phantom import PhantomConfig, simulate
from difftract.reconst.csd import CsdFit, CsdModel
from difftract.reconst.response import check_response, estimate_response, response_region
from difftract.reconst.sh import SHFit, n_coeffs

RESPONSE = (np.array([0.0017, 0.0003, 0.0003]), 1000.0)


def gtab_of(phantom):
    return gradient_table(phantom.bvals, bvecs=phantom.bvecs)


def every(mask: np.ndarray, step: int) -> np.ndarray:
    """Every ``step``-th voxel of ``mask`` (keeps DIPY's per-voxel reference fits short)."""
    out = np.zeros_like(mask)
    idx = np.argwhere(mask)[::step]
    out[tuple(idx.T)] = True
    return out


def dipy_csd(gtab, data, mask, lmax, response=RESPONSE):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # legacy-basis and "more parameters than data points" notices
        model = ConstrainedSphericalDeconvModel(gtab, response, sh_order_max=lmax)
        return model, model.fit(data, mask=mask).shm_coeff


# Our batched torch CSD against DIPY's per-voxel numpy CSD, float64: the same iterations and the
# same active sets, different BLAS calls. The error is eps times the condition of the (regularised)
# normal matrix, up to ~1e5 for lmax 8 from 32 directions: <= ~2e-11; measured <= 8e-14. A changed
# constraint, basis or response gives errors of order 1e-2 and more.
CROSS_IMPL_RTOL = 1e-10


def relative_error(ours: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per-voxel error relative to the reference coefficient norm."""
    return np.linalg.norm(ours - ref, axis=-1) / np.maximum(np.linalg.norm(ref, axis=-1), 1e-12)


@pytest.fixture(scope="module")
def crossing():
    """A noisy (SNR 20) crossing with 64 directions: X^T X is invertible up to lmax 8."""
    return simulate(PhantomConfig(preset="crossing", seed=1, ndirs=64, streamlines_per_bundle=50))


@pytest.fixture(scope="module")
def references(fibercup, crossing):
    """DIPY's coefficients (legacy basis) on a subset of each phantom, per lmax."""
    cases = {"fibercup": (fibercup, every(fibercup.mask, 37)), "crossing": (crossing, every(crossing.mask, 5))}
    return {(name, lmax): (phantom, mask, dipy_csd(gtab_of(phantom), phantom.data, mask, lmax)[1])
            for name, (phantom, mask) in cases.items() for lmax in (4, 6, 8)}


@pytest.mark.parametrize("lmax", [4, 6, 8])
def test_matrices_are_dipys(crossing, fibercup, lmax):
    for phantom in (crossing, fibercup):
        dipy_model, _ = dipy_csd(gtab_of(phantom), phantom.data[:1, :1, :1], None, lmax)
        ours = CsdModel(gtab_of(phantom), RESPONSE, lmax=lmax, legacy=True)
        mats = ours.matrices(ours.response)
        scale = np.abs(dipy_model._X).max()
        np.testing.assert_allclose(mats.X, dipy_model._X, rtol=0, atol=1e-12 * scale)
        np.testing.assert_allclose(mats.B_reg, dipy_model.B_reg, rtol=0, atol=1e-12 * np.abs(dipy_model.B_reg).max())
        # P_regularised: DIPY's solver adds 1e-5 I itself when LAPACK rejects X^T X
        P = dipy_model._P + (1e-5 * np.eye(len(mats.P)) if mats.P_regularised else 0)
        np.testing.assert_allclose(mats.P, P, rtol=0, atol=1e-12 * np.abs(P).max())
    assert CsdModel(gtab_of(fibercup), RESPONSE, lmax=8).matrices(RESPONSE).P_regularised  # 45 coeffs, 32 dirs


@pytest.mark.parametrize("legacy", [True, False])
@pytest.mark.parametrize("lmax", [4, 6, 8])
@pytest.mark.parametrize("name", ["crossing", "fibercup"])
def test_coefficients_equal_dipys(references, name, lmax, legacy):
    phantom, mask, ref = references[name, lmax]
    if not legacy:
        ref = convert_sh_from_legacy(ref, "descoteaux07")
    fit = CsdModel(gtab_of(phantom), RESPONSE, lmax=lmax, legacy=legacy).fit(phantom.data, mask)
    assert fit.coeffs.shape == mask.shape + (n_coeffs(lmax),)
    err = relative_error(fit.coeffs[mask], ref[mask])
    assert err.max() < CROSS_IMPL_RTOL, f"max relative error {err.max():.2e}"
    assert np.all(fit.coeffs[~mask] == 0)
    assert fit.params["iterations"]["not_converged"] == 0


@pytest.mark.parametrize("settings", [dict(convergence=2), dict(convergence=0), dict(tau=0.25, lambda_=0.5)])
def test_other_settings_equal_dipys(crossing, settings):
    """Few iterations (voxels left unconverged keep their last iterate, as in DIPY), other tau/lambda."""
    mask = every(crossing.mask, 11)
    gtab = gtab_of(crossing)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ConstrainedSphericalDeconvModel(gtab, RESPONSE, sh_order_max=6, **settings)
        ref = model.fit(crossing.data, mask=mask).shm_coeff
    fit = CsdModel(gtab, RESPONSE, lmax=6, legacy=True, **settings).fit(crossing.data, mask)
    assert relative_error(fit.coeffs[mask], ref[mask]).max() < CROSS_IMPL_RTOL
    if settings.get("convergence", 50) < 3:
        assert fit.params["iterations"]["not_converged"] > 0


@pytest.mark.parametrize("lmax", [6, 8])
def test_float32_is_close(references, lmax):
    phantom, mask, ref = references["crossing", lmax]
    fit = CsdModel(gtab_of(phantom), RESPONSE, lmax=lmax, legacy=True).fit(phantom.data, mask, dtype="float32")
    assert fit.coeffs.dtype == np.float32
    err = relative_error(fit.coeffs[mask].astype(np.float64), ref[mask])
    # an fODF amplitude within rounding of the threshold may switch a constraint: a rare large error
    assert np.median(err) < 1e-4 and np.quantile(err, 0.99) < 1e-3, np.quantile(err, [0.5, 0.99, 1])


def test_float32_solves_in_float64_when_ill_conditioned(fibercup):
    """lmax 8 from 32 directions: X^T X is singular, float32 cannot solve it, float64 does."""
    mask = every(fibercup.mask, 97)
    model = CsdModel(gtab_of(fibercup), RESPONSE, lmax=8)
    f64 = model.fit(fibercup.data, mask)
    f32 = model.fit(fibercup.data, mask, dtype="float32")
    assert f32.params["solve_dtype"] == "float64" and f64.params["solve_dtype"] == "float64"
    assert np.quantile(relative_error(f32.coeffs[mask], f64.coeffs[mask]), 0.99) < 1e-5


def test_fit_is_an_sh_field(crossing):
    mask = every(crossing.mask, 16)
    fit = CsdModel(gtab_of(crossing), RESPONSE, lmax=6).fit(crossing.data, mask, chunk_size=37)
    assert isinstance(fit, CsdFit) and isinstance(fit, SHFit)
    assert (fit.lmax, fit.legacy) == (6, False)
    dirs = np.eye(3)
    odf = fit.odf(dirs)
    assert odf.shape == mask.shape + (3,)
    whole = CsdModel(gtab_of(crossing), RESPONSE, lmax=6).fit(crossing.data, mask)
    np.testing.assert_allclose(fit.coeffs, whole.coeffs, rtol=0, atol=1e-12)   # chunking changes nothing
    params = fit.params
    assert params["response"]["source"] == "given" and params["lmax"] == 6 and params["shell"] == 1000.0
    assert params["tau"] == 0.1 and params["lambda"] == 1.0 and params["iterations"]["max"] >= 1


def test_auto_response_matches_dipy_on_the_same_region(fibercup):
    gtab = gtab_of(fibercup)
    data, mask = fibercup.data[:, :, 4:7], fibercup.mask[:, :, 4:7]    # three slices keep it quick
    region, threshold = response_region(gtab, data, mask)
    assert threshold == 0.7 and region.sum() >= 100 and not (region & ~mask).any()
    (ref_evals, ref_S0), _ = response_from_mask_ssst(gtab, data, region)
    evals, S0 = estimate_response(gtab, data, mask)
    # DIPY takes the log of float32 data in float32; difftract in float64: ~1e-8 apart
    np.testing.assert_allclose(evals, ref_evals, rtol=1e-7)
    assert S0 == pytest.approx(float(ref_S0), rel=1e-6)
    assert evals[0] > evals[1] == evals[2] > 0
    # without a mask the background (noise: high FA) must not enter the estimate
    evals_nomask, S0_nomask = estimate_response(gtab, data)
    np.testing.assert_allclose(evals_nomask, evals, rtol=0.02)
    assert S0_nomask == pytest.approx(S0, rel=0.02)


def test_auto_response_in_fit_is_recorded(fibercup):
    mask = fibercup.mask.copy()
    mask[..., [0, 1, 2, 3, 4, 6, 7, 8, 9]] = False                   # one slice: about 260 voxels with FA > 0.7
    fit = CsdModel(gtab_of(fibercup), "auto", lmax=4).fit(fibercup.data, mask)
    response = fit.params["response"]
    assert response["source"] == "auto" and response["fa_threshold"] == 0.7 and response["n_voxels"] > 0
    assert len(response["evals"]) == 3 and response["S0"] > 0


def test_response_threshold_is_lowered_with_a_note(crossing, caplog):
    gtab = gtab_of(crossing)
    with caplog.at_level(logging.INFO, logger="difftract"):
        region, threshold = response_region(gtab, crossing.data, crossing.mask, min_voxels=10 ** 6)
    assert threshold == pytest.approx(0.3)
    assert region.sum() > 0 and "only" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="difftract"):
        _, lowered = response_region(gtab, crossing.data, crossing.mask, fa_threshold=0.95, min_voxels=100)
    assert 0.3 <= lowered < 0.95 and f"FA > {lowered:.2g}" in caplog.text


def test_response_without_anisotropy_is_a_config_error():
    bvals = np.r_[0.0, np.full(30, 1000.0)]
    rng = np.random.default_rng(0)
    bvecs = rng.normal(size=(31, 3))
    bvecs /= np.linalg.norm(bvecs, axis=1, keepdims=True)
    data = np.broadcast_to(np.r_[1000.0, np.full(30, 1000 * np.exp(-0.7))], (4, 4, 2, 31)).astype(np.float32)
    gtab = gradient_table(bvals, bvecs=bvecs)
    with pytest.raises(ConfigError, match="response"):
        estimate_response(gtab, data)
    with pytest.raises(ConfigError, match="response"):
        CsdModel(gtab, None, lmax=4).fit(data)


def test_response_validation():
    evals, S0 = check_response(((np.array([1.7e-3, 3e-4, 3e-4]), 900.0), 0.17))   # DIPY's auto_response output
    assert S0 == 900.0 and evals.shape == (3,)
    for bad in [(np.array([1e-3, 0.0, 0.0]), 900.0), (np.array([1e-3, 2e-4]), 900.0),
                (np.array([1e-3, 2e-4, 2e-4]), -1.0), "dipy", 3.0]:
        with pytest.raises(ConfigError):
            CsdModel(gradient_table(np.r_[0.0, np.full(6, 1000.0)], bvecs=np.r_[[[0, 0, 0]], np.eye(3), -np.eye(3)]),
                     bad, lmax=2)


def test_bad_parameters_are_config_errors(crossing):
    gtab = gtab_of(crossing)
    for kwargs in [dict(lmax=5), dict(lambda_=-1.0), dict(tau=np.nan), dict(convergence=-1), dict(shell=3000.0)]:
        with pytest.raises(ConfigError):
            CsdModel(gtab, RESPONSE, **kwargs)
    with pytest.raises(ConfigError, match="gradient table"):
        CsdModel(gtab, RESPONSE).fit(crossing.data[..., :-1])


def test_multi_shell_deconvolves_one_shell():
    phantom = simulate(PhantomConfig(preset="crossing", seed=2, bvals=(1000.0, 2500.0), ndirs=(30, 40),
                                     streamlines_per_bundle=20))
    gtab = gtab_of(phantom)
    mask = every(phantom.mask, 23)
    for shell in (None, 1000.0):
        fit = CsdModel(gtab, RESPONSE, lmax=6, shell=shell).fit(phantom.data, mask)
        picked = (phantom.bvals < 50) | (np.abs(phantom.bvals - (shell or 2500.0)) < 20)
        sub = gradient_table(phantom.bvals[picked], bvecs=phantom.bvecs[picked])
        _, ref = dipy_csd(sub, phantom.data[..., picked], mask, 6)
        err = relative_error(fit.coeffs[mask], convert_sh_from_legacy(ref, "descoteaux07")[mask])
        assert err.max() < CROSS_IMPL_RTOL and fit.params["shell"] == (shell or 2500.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu(references):
    phantom, mask, ref = references["fibercup", 8]
    fit = CsdModel(gtab_of(phantom), RESPONSE, lmax=8, legacy=True).fit(phantom.data, mask, device="cuda")
    # cuBLAS/cuSOLVER instead of MKL: the same eps x condition bound as CROSS_IMPL_RTOL, but not yet
    # measured on a GPU; kept at 1e-6 until it is
    assert relative_error(fit.coeffs[mask], ref[mask]).max() < 1e-6
