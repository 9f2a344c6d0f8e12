"""Tensor-field errors: hand-built tensors with known eigenvalues and rotations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from difftract.errors import ConfigError
from difftract.eval.tensor_errors import tensor_errors

L1, L2 = 1.7e-3, 0.3e-3


def tensor(evals, angle_deg=0.0):
    """DIPY-order tensor with eigenvalues ``evals``, its first axis rotated by ``angle_deg`` about z."""
    a = math.radians(angle_deg)
    r = np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
    m = r @ np.diag(evals) @ r.T
    return np.array([m[0, 0], m[0, 1], m[1, 1], m[0, 2], m[1, 2], m[2, 2]])


def field(*tensors):
    """A (n, 1, 1, 6) field of the given tensors and its full mask."""
    out = np.stack(tensors)[:, None, None, :]
    return out, np.ones(out.shape[:3], dtype=bool)


def test_identical_fields_have_no_error():
    ref, mask = field(tensor([L1, L2, L2], 10), tensor([1e-3, 0.8e-3, 0.2e-3], 70), tensor([1e-3] * 3))
    err = tensor_errors(ref.copy(), ref, mask)
    assert err.voxels == 3 and err.angle_voxels == 2
    for key, value in err.as_dict().items():
        if key not in ("voxels", "angle_voxels", "fa_threshold"):
            assert value == 0.0, key      # the same tensors through the same code: exactly zero
    single = tensor_errors(ref.astype(np.float32), ref, mask)    # float32 rounding only
    assert single.tensor_error < 1e-9 and single.fa_mae < 1e-6 and single.angle_mean < 1e-3


@pytest.mark.parametrize("angle, expected", [(30.0, 30.0), (150.0, 30.0), (90.0, 90.0)])
def test_rotation_by_a_known_angle(angle, expected):
    ref, mask = field(tensor([L1, L2, L2]))
    est, _ = field(tensor([L1, L2, L2], angle))
    err = tensor_errors(est, ref, mask)
    # v1 from a Jacobi solve of the rotated tensor: accurate to ~eps*|D|/gap (~1e-15 rad), so 1e-9
    # degrees is a wide margin over rounding and still far below any wrong-vector error (degrees)
    assert err.angle_mean == pytest.approx(expected, abs=1e-9)
    assert err.angle_median == pytest.approx(expected, abs=1e-9)
    # a rotation keeps the eigenvalues; the rotated tensor (a BLAS 3x3 product) and its Jacobi
    # eigenvalues are each a few ulps off, which moves FA (order 1) by a few eps: 1e-14 (45 eps);
    # MD/AD/RD (order 1e-3 mm^2/s) move by a few eps * 1e-3: 1e-15 is ~4e-13 relative. A wrong
    # eigenvalue would be off by ~1e-4 (diffusivities) or ~0.1 (FA).
    assert err.fa_mae == pytest.approx(0.0, abs=1e-14)
    for key in ("md_mae", "ad_mae", "rd_mae"):
        assert getattr(err, key) == pytest.approx(0.0, abs=1e-15), key
    # |dDxx| = |dDyy| = (L1 - L2) sin^2, |dDxy| = (L1 - L2) |sin cos|, the rest 0
    s, c = math.sin(math.radians(angle)), math.cos(math.radians(angle))
    assert err.tensor_error == pytest.approx((L1 - L2) * (2 * s * s + abs(s * c)), rel=1e-12)
    assert err.tensor_error_full == pytest.approx((L1 - L2) * (2 * s * s + 2 * abs(s * c)), rel=1e-12)


def test_scalar_map_errors_of_known_eigenvalues():
    # reference (3, 1, 1)e-3: FA sqrt(4/11), MD 5/3e-3, AD 3e-3, RD 1e-3
    # estimate  (2, 1, 1)e-3: FA sqrt(1/6),  MD 4/3e-3, AD 2e-3, RD 1e-3
    ref, mask = field(tensor([3e-3, 1e-3, 1e-3], 40))
    est, _ = field(tensor([2e-3, 1e-3, 1e-3], 40))
    err = tensor_errors(est, ref, mask)
    assert err.fa_mae == pytest.approx(math.sqrt(4 / 11) - math.sqrt(1 / 6), rel=1e-12)
    assert err.md_mae == pytest.approx(1 / 3 * 1e-3, rel=1e-12)
    assert err.ad_mae == pytest.approx(1e-3, rel=1e-12)
    assert err.rd_mae == pytest.approx(0.0, abs=1e-15)
    assert err.md_mre == pytest.approx(0.2, rel=1e-12)
    assert err.ad_mre == pytest.approx(1 / 3, rel=1e-12)
    assert err.rd_mre == pytest.approx(0.0, abs=1e-12)
    # eigenvector of equal-axis tensors, gap 2e-3 of a 3e-3 norm: ~eps*1.5 rad (1e-14 degrees) apart,
    # measured by atan2 (no arccos loss near 0); 1e-11 degrees keeps a 1000x margin
    assert err.angle_mean == pytest.approx(0.0, abs=1e-11)
    # the difference is 1e-3 along the 40-degree axis: (cos^2, cos sin, sin^2) times 1e-3
    c, s = math.cos(math.radians(40)), math.sin(math.radians(40))
    assert err.tensor_error == pytest.approx(1e-3 * (c * c + c * s + s * s), rel=1e-12)
    assert err.tensor_error_full == pytest.approx(1e-3 * (c * c + 2 * c * s + s * s), rel=1e-12)


def test_angle_is_restricted_to_anisotropic_reference_voxels():
    ref, mask = field(tensor([L1, L2, L2]), tensor([L1, L2, L2]), tensor([L1, L2, L2]),
                      tensor([1e-3] * 3),                          # FA 0: excluded
                      tensor([1.1e-3, 1e-3, 1e-3]))                # FA ~0.065: excluded at 0.2
    est, _ = field(tensor([L1, L2, L2], 10), tensor([L1, L2, L2], -20), tensor([L1, L2, L2], 60),
                   tensor([L1, L2, L2], 45), tensor([L1, L2, L2], 80))
    err = tensor_errors(est, ref, mask)
    assert err.angle_voxels == 3 and err.fa_threshold == 0.2
    assert err.angle_mean == pytest.approx(30.0) and err.angle_median == pytest.approx(20.0)
    err = tensor_errors(est, ref, mask, fa_threshold=0.05)
    assert err.angle_voxels == 4 and err.angle_mean == pytest.approx((10 + 20 + 60 + 80) / 4)
    iso, mask1 = field(tensor([1e-3] * 3))
    err = tensor_errors(iso, iso, mask1)
    assert err.angle_voxels == 0 and np.isnan(err.angle_mean) and np.isnan(err.angle_median)


def test_only_masked_voxels_count_and_nan_outside_is_fine():
    ref, mask = field(tensor([L1, L2, L2]), tensor([L1, L2, L2]))
    est = ref.copy()
    est[1] = np.nan
    mask[1] = False
    err = tensor_errors(est, ref, mask)
    assert err.voxels == 1 and err.tensor_error == 0.0


def test_refusals():
    ref, mask = field(tensor([L1, L2, L2]), tensor([L1, L2, L2]))
    with pytest.raises(ConfigError, match="shapes differ"):
        tensor_errors(ref[:1], ref, mask)
    with pytest.raises(ConfigError, match=r"\(X, Y, Z, 6\)"):
        tensor_errors(ref[..., :5], ref[..., :5], mask)
    with pytest.raises(ConfigError, match="mask shape"):
        tensor_errors(ref, ref, mask[:1])
    with pytest.raises(ConfigError, match="bool"):
        tensor_errors(ref, ref, mask.astype(np.uint8))
    with pytest.raises(ConfigError, match="mask is empty"):
        tensor_errors(ref, ref, np.zeros_like(mask))
    bad = ref.copy()
    bad[0, 0, 0, :2] = [np.nan, np.inf]
    with pytest.raises(ConfigError, match="estimated tensors have 2 non-finite values in 1 of 2 masked voxels"):
        tensor_errors(bad, ref, mask)
    with pytest.raises(ConfigError, match="reference tensors have 2 non-finite"):
        tensor_errors(ref, bad, mask)
    with pytest.raises(ConfigError, match="fa_threshold"):
        tensor_errors(ref, ref, mask, fa_threshold=1.0)


def test_binned_errors_show_a_bias_per_fa_bin_and_agree_with_the_means():
    from difftract.eval.tensor_errors import binned_tensor_errors

    ref = np.zeros((4, 4, 2, 6))
    ref[...] = [1.8e-3, 0, 0.2e-3, 0, 0, 0.2e-3]          # FA 0.88 ...
    ref[:2] = [0.8e-3, 0, 0.75e-3, 0, 0, 0.7e-3]          # ... and FA 0.07
    est = ref.copy()
    est[..., 0] *= 1.05
    est[2, 0, 0, 2] += 0.1e-3                              # one voxel of the FA-0.88 bin errs more
    est[2, 0, 0, 5] -= 0.1e-3                              # (same MD and direction)
    mask = np.ones((4, 4, 2), bool)
    rows = binned_tensor_errors(est, ref, mask)
    assert [r["voxels"] for r in rows] == [16, 0, 0, 0, 16]
    assert rows[0]["fa_bias"] > 0 and rows[4]["fa_bias"] > 0 and np.isnan(rows[1]["fa_bias"])

    def fa_error(voxel):
        return tensor_errors(est[voxel][None, None, None], ref[voxel][None, None, None],
                             np.ones((1, 1, 1), bool)).fa_mae

    # the scatter of 15 voxels with one error and one with another: |e2 - e1| sqrt(15) / 16
    assert rows[4]["fa_std"] == pytest.approx(abs(fa_error((2, 0, 0)) - fa_error((2, 1, 0))) * 15 ** 0.5 / 16)
    assert rows[0]["fa_std"] == pytest.approx(0.0, abs=1e-12) and np.isnan(rows[1]["fa_std"])
    assert np.isnan(rows[0]["angle_mean"]) and rows[4]["angle_mean"] == pytest.approx(0.0, abs=1e-6)
    whole = tensor_errors(est, ref, mask)
    pooled = sum(r["fa_mae"] * r["voxels"] for r in rows if r["voxels"]) / 32
    assert pooled == pytest.approx(whole.fa_mae)
    assert rows[4]["md_bias"] == pytest.approx(1.8e-3 * 0.05 / 3)
    with pytest.raises(ConfigError, match="increase"):
        binned_tensor_errors(est, ref, mask, edges=(0.0, 0.5, 0.5, 1.0))
