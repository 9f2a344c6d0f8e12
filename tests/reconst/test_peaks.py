"""Peaks: DIPY's peaks_from_model, batched; tensor peaks; the MRtrix volume layout."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from dipy.core.gradients import gradient_table
from dipy.data import default_sphere, get_sphere
from dipy.direction.peaks import peak_directions, peaks_from_model
from dipy.reconst.csdeconv import ConstrainedSphericalDeconvModel
from dipy.reconst.shm import real_sh_descoteaux

from difftract.errors import ConfigError
from difftract.phantom import PhantomConfig, simulate
from difftract.reconst.csd import CsdModel
from difftract.reconst.peaks import Peaks, sphere_neighbours, close_pairs, find_peaks, peaks_from_evecs, peaks_from_sh
from difftract.reconst.sh import SHFit, sh_basis

RESPONSE = (np.array([0.0017, 0.0003, 0.0003]), 1000.0)


class GivenCoefficients:
    """A stand-in DIPY model whose fit returns precomputed SH coefficients.

    ``peaks_from_model`` hands each voxel's data to ``fit``; the data here is the voxel's
    flat index, so DIPY's own peak extraction runs on exactly our coefficients.
    """

    def __init__(self, coeffs: np.ndarray, lmax: int, legacy: bool, sphere):
        self.coeffs = coeffs.reshape(-1, coeffs.shape[-1])
        self.B = real_sh_descoteaux(lmax, sphere.theta, sphere.phi, legacy=legacy)[0]

    def fit(self, data):
        coeffs, B = self.coeffs[int(data[0])], self.B

        class Fit:
            def odf(self, sphere):
                return np.dot(coeffs, B.T)

        return Fit()


def dipy_peaks(fit: SHFit, mask: np.ndarray, sphere=default_sphere, rel=0.5, angle=25.0, npeaks=3):
    index = np.arange(mask.size, dtype=np.float64).reshape(*mask.shape, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        model = GivenCoefficients(fit.coeffs, fit.lmax, fit.legacy, sphere)
        return peaks_from_model(model, index, sphere, rel, angle, mask=mask, npeaks=npeaks, return_sh=False,
                                normalize_peaks=False)


def gtab_of(phantom):
    return gradient_table(phantom.bvals, bvecs=phantom.bvecs)


@pytest.fixture(scope="module")
def fibercup_fit(fibercup):
    mask = fibercup.mask.copy()
    mask[..., [0, 1, 2, 3, 4, 6, 7, 8, 9]] = False                    # one slice, ~2,800 voxels
    return CsdModel(gtab_of(fibercup), RESPONSE, lmax=8).fit(fibercup.data, mask)


@pytest.fixture(scope="module")
def noisy_crossing_fit():
    phantom = simulate(PhantomConfig(preset="crossing", seed=3, ndirs=45, streamlines_per_bundle=40))
    return phantom, CsdModel(gtab_of(phantom), RESPONSE, lmax=8).fit(phantom.data, phantom.mask)


@pytest.fixture(scope="module")
def crossing_fit(crossing_noisefree):
    return CsdModel(gtab_of(crossing_noisefree), RESPONSE, lmax=8, legacy=True).fit(crossing_noisefree.data,
                                                                                    crossing_noisefree.mask)


@pytest.mark.parametrize("case", ["fibercup", "crossing"])
def test_peaks_equal_dipys(case, fibercup_fit, noisy_crossing_fit):
    fit = fibercup_fit if case == "fibercup" else noisy_crossing_fit[1]
    ours = peaks_from_sh(fit, relative_peak_threshold=0.5, min_separation_angle=25, npeaks=3)
    ref = dipy_peaks(fit, fit.mask)
    m = fit.mask
    same = (ours.indices[m] == ref.peak_indices[m]).all(axis=-1)
    assert same.mean() >= 0.999, f"{(~same).sum()} voxels differ"
    # fODF amplitudes B @ c, torch vs numpy matmul (45 terms): a few eps of the largest amplitude
    # (measured 8e-16); 1e-12 keeps a 1000x margin, a wrong vertex or basis is off by > 1e-2
    np.testing.assert_allclose(ours.values[m][same], ref.peak_values[m][same], rtol=0, atol=1e-12 * np.abs(
        ref.peak_values).max())
    np.testing.assert_array_equal(ours.dirs[m][same], ref.peak_dirs[m][same])
    assert np.all(ours.indices[~m] == -1) and np.all(ours.dirs[~m] == 0)
    assert ours.dirs.shape == m.shape + (3, 3) and ours.params["npeaks"] == 3


def test_noise_free_differences_are_rounding_ties(crossing_fit):
    """Noise-free isotropic voxels have an fODF flat to 1e-13: its 'peaks' are rounding
    noise, and the two implementations (BLAS vs torch sums) may pick different ones."""
    ours = peaks_from_sh(crossing_fit)
    ref = dipy_peaks(crossing_fit, crossing_fit.mask)
    m = crossing_fit.mask
    differ = m & ~(ours.indices == ref.peak_indices).all(axis=-1)
    odf = crossing_fit.odf(default_sphere.vertices)[differ]
    assert np.all(np.ptp(odf, axis=-1) < 1e-9 * np.abs(odf).max(axis=-1))
    assert differ.sum() < 0.01 * m.sum()


def test_full_sphere_and_other_settings_equal_dipys(noisy_crossing_fit):
    """On a full sphere v and -v carry the same amplitude up to rounding, so which of the
    two is reported is a coin toss in either implementation: compare axes, not indices."""
    _, fit = noisy_crossing_fit
    sphere = get_sphere(name="symmetric362")
    ours = peaks_from_sh(fit, sphere=sphere, relative_peak_threshold=0.2, min_separation_angle=40, npeaks=5)
    ref = dipy_peaks(fit, fit.mask, sphere, 0.2, 40.0, 5)
    m = fit.mask
    present = ref.peak_indices[m] >= 0
    assert np.array_equal(ours.indices[m] >= 0, present)
    axis_cos = np.abs(np.einsum("vpi,vpi->vp", ours.dirs[m], ref.peak_dirs[m]))
    same = np.where(present, axis_cos > 1 - 1e-12, True).all(axis=-1)
    assert same.mean() >= 0.999
    np.testing.assert_allclose(ours.values[m][same], ref.peak_values[m][same], rtol=1e-9, atol=1e-12)


def test_end_to_end_with_dipys_csd_model(noisy_crossing_fit):
    """DIPY's CSD + peaks_from_model against our CsdModel + peaks_from_sh, a few voxels."""
    phantom, fit = noisy_crossing_fit
    mask = np.zeros_like(phantom.mask)
    mask[4:20:2, 4:20:2, 3] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ConstrainedSphericalDeconvModel(gtab_of(phantom), RESPONSE, sh_order_max=8)
        ref = peaks_from_model(model, phantom.data, default_sphere, 0.5, 25, mask=mask, npeaks=3,
                               return_sh=False, normalize_peaks=False)
    ours = peaks_from_sh(fit, mask)
    np.testing.assert_array_equal(ours.indices[mask], ref.peak_indices[mask])
    # DIPY's CSD + peaks vs ours: coefficients ~1e-13 apart (eps x condition, see test_csd; 3e-14
    # on these values); 1e-9 leaves room for the regularised lmax-8 solve, a wrong peak is off by > 1e-2
    np.testing.assert_allclose(ours.values[mask], ref.peak_values[mask], rtol=1e-9)


def test_noise_free_crossing_directions_are_recovered(crossing_fit, crossing_noisefree):
    phantom = crossing_noisefree
    peaks = peaks_from_sh(crossing_fit)
    crossing = (phantom.fractions[..., 1] > 0.35) & phantom.mask      # two substantial populations
    assert crossing.sum() > 20
    truth, found = phantom.peaks[crossing][:, :2], peaks.dirs[crossing]   # (n, 2, 3), (n, 3, 3)
    cos = np.abs(np.einsum("nti,npi->ntp", truth, found)).max(axis=2)   # best match of each true direction
    angles = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    assert np.mean((angles < 10).all(axis=1)) > 0.8, np.percentile(angles, [50, 90])


def lobes(directions: list, weights: list, lmax: int = 8, sharpness: float = 0.02) -> np.ndarray:
    """SH coefficients (published basis) of smooth lobes along ``directions``."""
    B, l_values = sh_basis(np.asarray(directions, dtype=np.float64), lmax, legacy=False)
    return (np.asarray(weights)[:, None] * B * np.exp(-sharpness * l_values * (l_values + 1))).sum(axis=0)


def peaks_of(coeffs: np.ndarray, **kwargs) -> Peaks:
    return peaks_from_sh(np.asarray(coeffs, dtype=np.float64)[None, None, None], legacy=False, **kwargs)


def unit(theta_deg: float) -> list:
    t = np.radians(theta_deg)
    return [np.sin(t), 0.0, np.cos(t)]


def test_hand_built_odfs():
    one = peaks_of(lobes([unit(0)], [1.0]))
    assert one.count[0, 0, 0] == 1 and abs(one.dirs[0, 0, 0, 0, 2]) > 0.99
    assert one.indices[0, 0, 0, 1] == -1 and one.values[0, 0, 0, 1] == 0

    weak = peaks_of(lobes([unit(0), unit(90)], [1.0, 0.3]))          # second lobe below half the first
    assert weak.count[0, 0, 0] == 1
    strong = peaks_of(lobes([unit(0), unit(90)], [1.0, 0.8]))
    assert strong.count[0, 0, 0] == 2 and strong.values[0, 0, 0, 0] > strong.values[0, 0, 0, 1] > 0
    assert abs(strong.dirs[0, 0, 0, 1, 0]) > 0.99
    npk = peaks_of(lobes([unit(0), unit(90)], [1.0, 0.8]), npeaks=1)
    assert npk.count[0, 0, 0] == 1 and npk.indices[0, 0, 0, 0] == strong.indices[0, 0, 0, 0]

    near = peaks_of(lobes([unit(0), unit(20)], [1.0, 0.9], sharpness=0.002), min_separation_angle=25)
    assert near.count[0, 0, 0] == 1                                   # two maxima, 20 degrees apart: one kept

    full = get_sphere(name="repulsion724")                            # both v and -v are vertices
    antipodal = peaks_of(lobes([unit(30)], [1.0]), sphere=full)
    assert antipodal.count[0, 0, 0] == 1

    flat = peaks_of(np.zeros(45))
    assert flat.count[0, 0, 0] == 0 and np.all(flat.indices == -1) and np.all(flat.dirs == 0)
    iso = peaks_of(np.r_[1.0, np.zeros(44)])                          # constant ODF: no local maximum
    assert iso.count[0, 0, 0] == 0
    nan = peaks_of(np.full(45, np.nan))
    assert nan.count[0, 0, 0] == 0


def test_a_lone_negative_maximum_is_no_peak():
    """DIPY's peak_directions gives value 0 for an ODF whose only maximum is negative."""
    odf = -2 + 0.5 * np.exp(-10 * (1 - np.abs(default_sphere.vertices @ [0, 0, 1.0])))
    _, ref_values, _ = peak_directions(odf, default_sphere, relative_peak_threshold=0.5, min_separation_angle=25)
    assert np.all(ref_values <= 0)
    ours_idx, ours_val = find_peaks(torch.as_tensor(odf)[None], torch.as_tensor(sphere_neighbours(default_sphere.edges, 362)),
                                    torch.as_tensor(close_pairs(default_sphere.vertices, 25.0)), 0.5, 3)
    assert np.all(ours_idx.numpy() == -1) and np.all(ours_val.numpy() == 0)
    shifted_idx, _ = find_peaks(torch.as_tensor(odf + 3)[None], torch.as_tensor(sphere_neighbours(default_sphere.edges, 362)),
                                torch.as_tensor(close_pairs(default_sphere.vertices, 25.0)), 0.5, 3)
    assert shifted_idx[0, 0] >= 0


def test_ties_and_plateaus_follow_dipy():
    """Integer-valued ODFs (many equal neighbours), negative ones, random ones."""
    rng = np.random.default_rng(0)
    sphere = default_sphere
    n = len(sphere.vertices)
    odfs = np.concatenate([rng.integers(0, 4, size=(60, n)), rng.integers(-3, 2, size=(30, n)),
                           rng.normal(size=(30, n)), np.zeros((1, n)), -np.ones((1, n))]).astype(np.float64)
    odfs[-3] = 0.0
    odfs[-3, 7] = -1.0                                                # a single dip: a plateau of maxima
    for rel, angle in [(0.5, 25.0), (0.3, 45.0), (1.0, 10.0)]:
        idx, val = find_peaks(torch.as_tensor(odfs), torch.as_tensor(sphere_neighbours(sphere.edges, n)),
                              torch.as_tensor(close_pairs(sphere.vertices, angle)), rel, n)
        for i, odf in enumerate(odfs):
            _, values, indices = peak_directions(odf, sphere, relative_peak_threshold=rel,
                                                 min_separation_angle=angle)
            k = len(indices)
            np.testing.assert_array_equal(idx[i, :k].numpy(), indices)
            np.testing.assert_array_equal(val[i, :k].numpy(), values)
            assert np.all(idx[i, k:].numpy() == -1)


def test_volume_layout_round_trip():
    rng = np.random.default_rng(1)
    dirs = rng.normal(size=(2, 3, 1, 3, 3))
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    values = rng.uniform(0.1, 2.0, size=(2, 3, 1, 3))
    dirs[0, 0, 0, 2], values[0, 0, 0, 2] = 0.0, 0.0                   # an absent third peak
    peaks = Peaks(dirs, values, np.full(values.shape, -1))
    volume = peaks.to_volume()
    assert volume.shape == (2, 3, 1, 9) and volume.dtype == np.float32
    np.testing.assert_allclose(volume[1, 2, 0, 3:6], dirs[1, 2, 0, 1] * values[1, 2, 0, 1], rtol=1e-6)
    back = Peaks.from_volume(volume)
    np.testing.assert_allclose(back.values, values, rtol=1e-6)
    np.testing.assert_allclose(back.dirs, dirs, atol=1e-6)
    assert back.count[0, 0, 0] == 2 and back.count[1, 1, 0] == 3
    unit_volume = peaks.to_volume(scaled=False)
    np.testing.assert_allclose(Peaks.from_volume(unit_volume).dirs, dirs, atol=1e-6)
    with pytest.raises(ConfigError):
        Peaks.from_volume(np.zeros((2, 2, 2, 8)))


def test_phantom_ground_truth_volume_reads(crossing_noisefree):
    gt = Peaks.from_volume(crossing_noisefree.peaks.reshape(*crossing_noisefree.mask.shape, 9))
    assert gt.npeaks == 3
    np.testing.assert_allclose(gt.dirs, crossing_noisefree.peaks, atol=1e-6)


def test_peaks_from_evecs():
    evecs = np.zeros((2, 1, 1, 3, 3))
    evecs[...] = np.eye(3)[[2, 0, 1]].T                               # principal eigenvector along z
    fa = np.array([0.8, 0.05]).reshape(2, 1, 1)
    peaks = peaks_from_evecs(evecs, fa, fa_threshold=0.1)
    assert peaks.npeaks == 1
    np.testing.assert_allclose(peaks.dirs[0, 0, 0, 0], [0, 0, 1])
    assert peaks.values[0, 0, 0, 0] == pytest.approx(0.8)
    assert peaks.count[1, 0, 0] == 0 and np.all(peaks.dirs[1] == 0)
    masked = peaks_from_evecs(evecs, fa, mask=np.zeros((2, 1, 1), bool))
    assert masked.count.sum() == 0
    with pytest.raises(ConfigError):
        peaks_from_evecs(evecs[..., :2], fa)


def test_bad_arguments_are_config_errors(crossing_fit):
    with pytest.raises(ConfigError, match="legacy"):
        peaks_from_sh(crossing_fit.coeffs)
    with pytest.raises(ConfigError):
        peaks_from_sh(np.zeros((2, 2, 2, 7)), legacy=False)
    for kwargs in [dict(relative_peak_threshold=1.5), dict(min_separation_angle=120), dict(npeaks=0)]:
        with pytest.raises(ConfigError):
            peaks_from_sh(crossing_fit, **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu(fibercup_fit):
    cpu = peaks_from_sh(fibercup_fit)
    gpu = peaks_from_sh(fibercup_fit, device="cuda")
    assert (cpu.indices == gpu.indices).all(axis=-1).mean() >= 0.999
