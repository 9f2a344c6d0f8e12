"""Tensor algebra: element orders, the Jacobi eigen-solver, scalar maps, exports to FSL and MRtrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dipy.reconst import dti as ddti
from dipy.reconst.utils import convert_tensors

from difftract.reconst import tensor as T


def random_tensors(n, seed=0):
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(n, 3, 3))
    return m + m.transpose(0, 2, 1)


def test_lower_triangular_round_trip_and_dipy_order():
    m = random_tensors(50)
    lt = T.lower_triangular(m)
    np.testing.assert_array_equal(lt.numpy(), ddti.lower_triangular(m))
    np.testing.assert_array_equal(T.from_lower_triangular(lt).numpy(), m)
    np.testing.assert_array_equal(ddti.from_lower_triangular(lt.numpy()), m)


@pytest.mark.parametrize("fmt", ["fsl", "mrtrix"])
def test_element_orders_match_dipy_convert_tensors(fmt):
    lt = T.lower_triangular(random_tensors(20)).numpy()
    ours = T.lower_triangular(T.from_lower_triangular(lt), fmt).numpy()
    np.testing.assert_array_equal(ours, convert_tensors(lt, "dipy", fmt))


def test_jacobi_eigh_matches_lapack_including_degenerate_cases():
    m = random_tensors(2000, seed=1)
    m[:5] = np.diag([1.0, 1.0, 2.0])        # two equal eigenvalues
    m[5:10] = np.eye(3) * 1e-3              # isotropic
    m[10:15] = 0                            # all zero
    m[15:20] = np.diag([3.0, -2.0, 1.0])    # already diagonal, a negative eigenvalue
    m[20:500] *= 1e-3                       # diffusion-like magnitudes
    evals, evecs = T.eigh3(T.lower_triangular(m))
    ref = np.linalg.eigh(m)[0][:, ::-1]
    norm = np.linalg.norm(m, axis=(1, 2)) + 1e-300
    # our elementwise Jacobi vs LAPACK (whichever the CPU's BLAS gives): both backward stable, errors
    # a few eps * |m| each (measured <= 6.2 eps); 1e-14 (45 eps) per tensor norm; a wrong rotation is O(1)
    assert np.max(np.abs(evals.numpy() - ref).max(1) / norm) < 1e-14
    rebuilt = T.quadratic_form(evals, evecs).numpy()
    assert np.max(np.abs(rebuilt - m).max((1, 2)) / norm) < 1e-14
    np.testing.assert_allclose(np.einsum("vji,vjk->vik", evecs, evecs), np.broadcast_to(np.eye(3), m.shape),
                               atol=1e-14)
    assert np.all(np.diff(evals.numpy(), axis=1) <= 0)  # descending


def test_jacobi_eigh_float32_and_batch_shapes():
    m = random_tensors(60).reshape(3, 4, 5, 3, 3) * 1e-3
    evals, evecs = T.eigh3(T.lower_triangular(torch.as_tensor(m, dtype=torch.float32)))
    assert evals.shape == (3, 4, 5, 3) and evecs.shape == (3, 4, 5, 3, 3) and evals.dtype == torch.float32
    ref = np.linalg.eigh(m)[0][..., ::-1]
    np.testing.assert_allclose(evals.numpy(), ref, atol=1e-6 * np.abs(m).max())


def test_scalar_maps_match_dipy():
    rng = np.random.default_rng(3)
    evals = np.sort(rng.uniform(0, 3e-3, size=(100, 3)), axis=1)[:, ::-1].copy()
    evals[0] = 0
    evecs = np.linalg.qr(rng.normal(size=(100, 3, 3)))[0]
    fa = T.fractional_anisotropy(evals).numpy()
    # same formulas on the same float64 eigenvalues, numpy vs torch: an ulp or two (FA: a sqrt of a
    # ratio of sums, measured <= 1 ulp); rtol 1e-12 for FA, 1e-14 (45 ulps) for the plain means/copies
    np.testing.assert_allclose(fa, ddti.fractional_anisotropy(evals), rtol=1e-12, atol=0)
    assert fa[0] == 0
    np.testing.assert_allclose(T.mean_diffusivity(evals).numpy(), ddti.mean_diffusivity(evals), rtol=1e-14)
    np.testing.assert_allclose(T.axial_diffusivity(evals).numpy(), ddti.axial_diffusivity(evals), rtol=1e-14)
    np.testing.assert_allclose(T.radial_diffusivity(evals).numpy(), ddti.radial_diffusivity(evals), rtol=1e-14)
    np.testing.assert_allclose(T.color_fa(fa, evecs).numpy(), ddti.color_fa(fa, evecs), rtol=1e-14)


def _fit_tensor(bvecs, bvals, signal_tensor):
    """The noise-free signal of ``signal_tensor`` seen through directions ``bvecs``."""
    return np.exp(-bvals * np.einsum("ni,ij,nj->n", bvecs, signal_tensor, bvecs))


def test_fsl_export_is_the_tensor_fsl_would_fit():
    """FSL's frame flips x for positive-determinant affines: its tensor has Dxy, Dxz negated."""
    from dipy.core.gradients import gradient_table

    from difftract.reconst.dti import TensorModel

    rng = np.random.default_rng(0)
    g = rng.normal(size=(30, 3))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    bvals, bvecs = np.r_[0.0, np.full(30, 1000.0)], np.vstack([[0, 0, 0], g])
    D = np.array([[1.5e-3, 0.3e-3, 0.2e-3], [0.3e-3, 0.6e-3, 0.1e-3], [0.2e-3, 0.1e-3, 0.5e-3]])
    signal = _fit_tensor(bvecs, bvals, D)[None]
    for affine, flip in ((np.diag([2.0, 2, 2, 1]), True), (np.diag([-2.0, 2, 2, 1]), False)):
        ours = TensorModel(gradient_table(bvals, bvecs=bvecs)).fit(signal).lower_triangular("fsl", affine)
        fsl_bvecs = bvecs * ([-1, 1, 1] if flip else [1, 1, 1])
        fsl = TensorModel(gradient_table(bvals, bvecs=fsl_bvecs)).fit(signal).lower_triangular()
        # two noise-free fits whose design matrices differ by exact sign flips: they agree to rounding
        # (eps x cond ~1e-14 relative); 1e-12 of the tensor scale, where a missed flip is 0.4e-3 off
        np.testing.assert_allclose(ours, convert_tensors(fsl, "dipy", "fsl"), rtol=0, atol=1e-12 * np.abs(D).max())


def test_mrtrix_export_is_in_scanner_axes():
    """An oblique affine: the exported tensor's principal direction is the world direction of v1."""
    angle = np.deg2rad(30)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([2.0, 2.0, 2.5])
    D = np.diag([1.7e-3, 0.3e-3, 0.3e-3])  # along array x
    world = T.from_lower_triangular(T.export_tensor(T.lower_triangular(D), "mrtrix", affine), "mrtrix").numpy()
    # 3x3 products in torch vs numpy: a few ulps of 1.7e-3 (~1e-18, measured 4e-19); 1e-15 is ~6e-13 of it
    np.testing.assert_allclose(world, rot @ D @ rot.T, atol=1e-15)
    v1 = np.linalg.eigh(world)[1][:, -1]
    assert abs(abs(v1 @ rot[:, 0]) - 1) < 1e-12


def test_export_needs_affine_and_known_format():
    lt = T.lower_triangular(np.eye(3))
    with pytest.raises(ValueError, match="affine"):
        T.export_tensor(lt, "fsl")
    with pytest.raises(ValueError, match="unknown tensor format"):
        T.export_tensor(lt, "ants")


@pytest.mark.parametrize("scale", [1e-200, 1e-3, 1e200])
def test_jacobi_eigh_is_scale_invariant(scale):
    m = random_tensors(200, seed=4)
    evals, evecs = T.eigh3(T.lower_triangular(m * scale))
    ref = np.linalg.eigh(m)[0][:, ::-1] * scale
    norm = np.linalg.norm(m, axis=(1, 2))[:, None] * scale
    # as in the LAPACK comparison above: 45 eps of the tensor norm (measured <= 2.8 eps)
    assert np.max(np.abs(evals.numpy() - ref) / norm) < 1e-14


def test_mrtrix_export_keeps_eigenvalues_for_sheared_affines():
    affine = np.eye(4)
    affine[:3, :3] = [[2.0, 0.3, 0.0], [0.0, 2.0, 0.2], [0.1, 0.0, 2.5]]
    D = np.diag([1.7e-3, 0.4e-3, 0.3e-3])
    world = T.from_lower_triangular(T.export_tensor(T.lower_triangular(D), "mrtrix", affine), "mrtrix").numpy()
    np.testing.assert_allclose(np.linalg.eigvalsh(world)[::-1], [1.7e-3, 0.4e-3, 0.3e-3], rtol=1e-12)
