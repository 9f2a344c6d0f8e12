"""DTI fits: DIPY's numbers (WLS and OLS) on noisy phantom data, edge cases, the API."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dipy.core.gradients import gradient_table
from dipy.reconst import dti as ddti

from difftract.errors import ConfigError
from difftract.reconst.dti import TensorModel, design_matrix, fit_log_linear


def rel(a, b, scale):
    return float(np.max(np.abs(a - b) / scale))


@pytest.mark.parametrize("method", ["WLS", "OLS"])
def test_matches_dipy_on_noisy_phantom(noisy64, method):
    data, mask, gtab = noisy64["data"], noisy64["mask"], noisy64["gtab"]
    ours = TensorModel(gtab, method).fit(data, mask)
    ref = ddti.TensorModel(gtab, fit_method=method, return_S0_hat=True).fit(data, mask=mask)
    m = mask
    # Same estimator, other code (torch normal equations + Jacobi vs DIPY's numpy pinv/eigh), float64.
    # The WLS weights S^2 span orders of magnitude, so the weighted problem's condition reaches ~1e5-1e6:
    # eps x cond ~ 1e-10 (measured: tensor 6e-11, FA 3.5e-10 of max(FA, 1e-3), colour FA 4e-10).
    # 1e-8 keeps a 20x+ margin; WLS vs OLS, or a wrong weight, differ by 4e-4 (1st percentile) to 8e-2.
    tol = 1e-8
    q, qr = ours.lower_triangular()[m], ref.lower_triangular()[m]
    assert rel(q, qr, np.abs(qr).max(-1, keepdims=True)) < tol
    assert rel(ours.fa[m], ref.fa[m], np.maximum(ref.fa[m], 1e-3)) < tol
    for name in ("md", "ad", "rd"):
        assert rel(getattr(ours, name)[m], getattr(ref, name)[m], getattr(ref, name)[m]) < tol, name
    assert rel(ours.evals[m], ref.evals[m], ref.evals[m].max(-1, keepdims=True)) < tol
    assert rel(ours.s0[m], ref.S0_hat[m], ref.S0_hat[m]) < tol
    np.testing.assert_allclose(ours.color_fa[m], ref.color_fa[m], rtol=0, atol=tol)
    # eigenvectors agree up to sign wherever they are well defined: an error of tol in the tensor turns
    # v by <= tol / gap = 1e-5 rad where the relative gap is > 1e-3, i.e. 1 - |cos| < 5e-11 (measured 1e-15)
    ev, evr = ours.evals[m], ref.evals[m]
    gap = np.min(-np.diff(evr, axis=1), axis=1) / evr[:, 0] > 1e-3
    dots = np.abs(np.einsum("vik,vik->vk", ours.evecs[m], ref.evecs[m]))
    assert gap.sum() > 1000 and np.min(dots[gap]) > 1 - 1e-10
    assert np.all(ours.evals[~m] == 0) and np.all(ours.fa[~m] == 0)


def test_float32_path_is_close(noisy64):
    data, mask, gtab = noisy64["data"], noisy64["mask"], noisy64["gtab"]
    f64 = TensorModel(gtab).fit(data, mask)
    f32 = TensorModel(gtab).fit(data, mask, dtype="float32")
    assert f32.evals.dtype == np.float32
    # logs taken in float32 (eps 1.2e-7), least squares in float64: measured 2-4 eps32; 1e-5 is ~80 eps32
    assert np.max(np.abs(f32.fa - f64.fa)) < 1e-5
    assert rel(f32.md[mask], f64.md[mask], f64.md[mask]) < 1e-5


def test_chunking_does_not_change_the_result(noisy64):
    """Chunk size changes only rounding, never which voxel gets which result.

    Not bit-exact: MKL/OpenBLAS pick different kernels (blocking, SIMD width) for batched
    matmul/solve/eigh per batch size, so the same voxel rounds differently in a batch of 7
    than in a batch of 1510 (seen on 2-core AMD EPYC: 6.5e-17 absolute). The bound is
    float64 eps (2.2e-16) times the condition of the equilibrated WLS normal equations
    (~1e2 unweighted, ~1e3 with the weights): observed ~1e-13 relative to each voxel's
    largest tensor element. rtol 1e-10 of that scale leaves a 1000x margin, while one
    voxel's result landing on its neighbour (a chunk boundary off by one) is >= 1e-2.
    """
    data, mask, gtab = noisy64["data"][:20, :20], noisy64["mask"][:20, :20], noisy64["gtab"]
    whole = TensorModel(gtab).fit(data, mask, chunk_size=10**6)
    q = whole.lower_triangular()[mask]
    scale = np.abs(q).max(-1, keepdims=True)                   # per-voxel tensor scale (~1e-3 mm^2/s)
    tol = 1e-10
    for chunk_size in (1, 7):                                  # 1: every voxel alone; 7: 1510 voxels, ragged last chunk
        chunked = TensorModel(gtab).fit(data, mask, chunk_size=chunk_size)
        assert np.array_equal(chunked.mask, whole.mask)
        assert np.all(chunked.lower_triangular()[~mask] == 0)
        assert np.max(np.abs(chunked.lower_triangular()[mask] - q) / scale) < tol, chunk_size
        assert np.max(np.abs(chunked.s0[mask] - whole.s0[mask]) / whole.s0[mask]) < tol, chunk_size
    # the tolerance can see a misplaced voxel: each voxel differs from the next by far more than tol
    assert np.min(np.max(np.abs(q[1:] - q[:-1]) / scale[1:], axis=-1)) > 1e3 * tol


def test_min_signal_and_negative_eigenvalues_as_dipy():
    """Zero and negative signal, DW above b0 (negative eigenvalues): DIPY's clipping, same numbers."""
    rng = np.random.default_rng(5)
    g = rng.normal(size=(20, 3))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    gtab = gradient_table(np.r_[0.0, 0.0, np.full(20, 1000.0)], bvecs=np.vstack([[0, 0, 0], [0, 0, 0], g]))
    data = rng.uniform(100, 900, size=(6, 22))
    data[0, 5:9] = 0.0          # signal dropouts
    data[1, 3] = -20.0          # negative values after some correction
    data[2, 2:] = 2000.0        # DW brighter than b0: negative diffusivities
    data[3] = 0.0               # empty voxel
    for method in ("WLS", "OLS"):
        ours = TensorModel(gtab, method).fit(data)
        ref = ddti.TensorModel(gtab, fit_method=method).fit(data)
        # as in test_matches_dipy_on_noisy_phantom (cross-implementation, eps x cond): rtol 1e-8; the atol
        # only matters for clipped/zero eigenvalues (min_diffusivity ~1e-9 or 0), where 1e-15 is 1e-6 of them
        np.testing.assert_allclose(ours.evals, ref.evals, rtol=1e-8, atol=1e-15)
        np.testing.assert_allclose(ours.fa, ref.fa, rtol=1e-8, atol=1e-12)
    assert np.all(ours.evals[2] == pytest.approx(1e-6 / -design_matrix(gtab).min()))


def test_recovers_a_known_tensor_exactly_without_noise():
    rng = np.random.default_rng(2)
    g = rng.normal(size=(30, 3))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    bvals = np.r_[0.0, np.full(15, 1000.0), np.full(15, 2000.0)]
    bvecs = np.vstack([[0, 0, 0], g])
    rot = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    D = rot @ np.diag([1.7e-3, 0.4e-3, 0.3e-3]) @ rot.T
    signal = 800 * np.exp(-bvals * np.einsum("ni,ij,nj->n", bvecs, D, bvecs))
    fit = TensorModel(gradient_table(bvals, bvecs=bvecs)).fit(signal[None])
    np.testing.assert_allclose(fit.quadratic_form[0], D, atol=1e-14)
    np.testing.assert_allclose(fit.evals[0], [1.7e-3, 0.4e-3, 0.3e-3], rtol=1e-10)
    assert fit.s0[0] == pytest.approx(800, rel=1e-10)
    assert abs(abs(fit.v1[0] @ rot[:, 0]) - 1) < 1e-10


def test_gradients_flow_to_the_signal():
    rng = np.random.default_rng(0)
    g = rng.normal(size=(12, 3))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    X = torch.as_tensor(design_matrix(gradient_table(np.r_[0.0, np.full(12, 1000.0)], bvecs=np.vstack([[0, 0, 0], g]))))
    signal = torch.tensor(rng.uniform(200, 900, size=(4, 13)), requires_grad=True)
    beta = fit_log_linear(signal, X, "WLS")
    beta[:, :6].sum().backward()
    assert signal.grad is not None and torch.isfinite(signal.grad).all() and signal.grad.abs().sum() > 0


def test_bad_models_refused(noisy64):
    gtab = noisy64["gtab"]
    with pytest.raises(ConfigError, match="fit_method"):
        TensorModel(gtab, "NLLS")
    with pytest.raises(ConfigError, match="min_signal"):
        TensorModel(gtab, min_signal=0)
    coplanar = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [1, -1, 0], [2, 1, 0], [1, 2, 0]], float)
    coplanar /= np.linalg.norm(coplanar, axis=1, keepdims=True)
    flat = gradient_table(np.r_[0.0, np.full(6, 1000.0)], bvecs=np.vstack([[0, 0, 0], coplanar]))
    with pytest.raises(ConfigError, match="non-coplanar"):
        TensorModel(flat)
    with pytest.raises(ConfigError, match="volumes"):
        TensorModel(gtab).fit(np.ones((2, 2, 2, 5)))


def test_maps_cover_what_users_expect(noisy64):
    fit = TensorModel(noisy64["gtab"]).fit(noisy64["data"][:8, :8], noisy64["mask"][:8, :8])
    maps = fit.maps("mrtrix", noisy64["phantom"].affine)
    assert {"tensor", "fa", "md", "ad", "rd", "rgb", "evals", "evecs", "v1", "s0"} <= set(maps)
    assert maps["tensor"][0].shape[-1] == 6 and "MRtrix" in maps["tensor"][1]
    assert maps["evecs"][0].shape[-2:] == (3, 3) and maps["rgb"][0].shape[-1] == 3


def test_huge_signals_stay_finite():
    """The WLS weights are normalised in log space: no overflow for any signal magnitude."""
    rng = np.random.default_rng(6)
    g = rng.normal(size=(12, 3))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    bvals, bvecs = np.r_[0.0, np.full(12, 1000.0)], np.vstack([[0, 0, 0], g])
    signal = np.exp(-bvals * np.einsum("ni,ij,nj->n", bvecs, np.diag([1.7e-3, 0.4e-3, 0.3e-3]), bvecs))
    fit = TensorModel(gradient_table(bvals, bvecs=bvecs)).fit(signal[None] * 1e200)
    np.testing.assert_allclose(fit.evals[0], [1.7e-3, 0.4e-3, 0.3e-3], rtol=1e-8)
