"""Sub-vertex peak refinement: a known single-fibre fODF whose vertex peak is off by degrees."""

import numpy as np
import pytest

from difftract.errors import ConfigError
from difftract.reconst.peak_refine import refine_directions, refine_peaks
from difftract.reconst.peaks import peaks_from_sh
from difftract.reconst.sh import sh_basis


def angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.degrees(np.arccos(np.clip(np.abs((a * b).sum(-1)), 0.0, 1.0)))


def single_fibre(fibre: np.ndarray, legacy: bool = False) -> np.ndarray:
    """Coefficients of sum_l sum_m Y_lm(u) Y_lm(fibre) (lmax 8): axially symmetric about
    ``fibre`` (addition theorem, the basis being orthonormal), its maximum at +-fibre."""
    B, _ = sh_basis(fibre[None], 8, legacy)
    return B[0]


def fibres(n: int) -> np.ndarray:
    rng = np.random.default_rng(3)
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("legacy", [False, True])
def test_refined_peak_is_the_fibre_where_the_vertex_peak_is_degrees_off(legacy):
    truth = fibres(20)
    coeffs = np.stack([single_fibre(f, legacy) for f in truth])[:, None, None, :]   # (20, 1, 1, 45)
    vertex = peaks_from_sh(coeffs, legacy=legacy, npeaks=1, progress=False).dirs      # (20, 1, 1, 1, 3)
    vertex_err = angle_deg(vertex[:, 0, 0, 0], truth)
    assert vertex_err.max() > 2.0                   # the sphere's spacing shows
    refined, values = refine_peaks(coeffs, vertex, legacy)
    err = angle_deg(refined[:, 0, 0, 0], truth)
    assert err.max() < 0.1
    peak_value = (coeffs[:, 0, 0] * coeffs[:, 0, 0]).sum(-1)          # f(fibre) = |Y(fibre)|^2
    np.testing.assert_allclose(values[:, 0, 0, 0], peak_value, rtol=1e-6)


def test_absent_peaks_stay_zero_and_order_follows_the_refined_amplitude():
    truth = fibres(2)
    coeffs = (single_fibre(truth[0]) + 1.2 * single_fibre(truth[1]))[None, None, None]
    dirs = np.zeros((1, 1, 1, 3, 3))
    dirs[0, 0, 0, 0], dirs[0, 0, 0, 1] = truth[0], truth[1]       # listed smaller first
    refined, values = refine_peaks(coeffs, dirs, legacy=False)
    assert values[0, 0, 0, 0] > values[0, 0, 0, 1] > 0 and values[0, 0, 0, 2] == 0
    assert np.all(refined[0, 0, 0, 2] == 0)


def test_shapes_are_checked():
    with pytest.raises(ConfigError):
        refine_directions(np.zeros((2, 45)), np.zeros((3, 3)), legacy=False)
    with pytest.raises(ConfigError):
        refine_peaks(np.zeros((2, 2, 2, 45)), np.zeros((2, 2, 1, 3, 3)), legacy=False)


def test_a_start_far_from_any_maximum_keeps_its_direction():
    fibre = np.array([0.0, 0.0, 1.0])
    start = np.array([[np.sin(np.radians(30)), 0.0, np.cos(np.radians(30))]])   # 30 degrees off the only lobe
    out, _ = refine_directions(single_fibre(fibre)[None], start, legacy=False)
    np.testing.assert_allclose(out, start)
    near = np.array([[np.sin(np.radians(4)), 0.0, np.cos(np.radians(4))]])
    out, _ = refine_directions(single_fibre(fibre)[None], near, legacy=False)
    assert angle_deg(out, fibre[None])[0] < 0.1
