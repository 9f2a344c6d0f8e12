"""The simulated phantom: determinism, ground-truth consistency and realism."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from dipy.core.gradients import gradient_table
from dipy.reconst.dti import TensorModel

from difftract.errors import ConfigError
from difftract.eval.traversal import endpoint_voxels, traversed_voxels
from difftract.phantom import PhantomConfig, simulate


def test_fibercup_has_seven_named_bundles_and_a_crossing(fibercup):
    names = [b.name for b in fibercup.bundles]
    assert names == ["horizontal", "vertical", "u_shape", "fan", "kiss_left", "kiss_right", "arc"]
    assert fibercup.shape == (64, 64, 10) and fibercup.data.dtype == np.float32
    summary = fibercup.summary()
    assert summary["crossing_voxels"] > 50 and summary["streamlines"] == 1400


def test_same_seed_same_arrays_other_seed_other_noise(fibercup):
    again = simulate(PhantomConfig(preset="fibercup", seed=0))
    np.testing.assert_array_equal(again.data, fibercup.data)
    for a, b in zip(again.streamlines, fibercup.streamlines):
        np.testing.assert_array_equal(a, b)
    other = simulate(PhantomConfig(preset="fibercup", seed=1))
    assert not np.array_equal(other.data, fibercup.data)
    np.testing.assert_array_equal(other.fractions, fibercup.fractions)  # fibercup geometry is fixed


def test_random_preset_geometry_changes_with_seed():
    cfg = dict(preset="random", n_bundles=2, streamlines_per_bundle=10, snr=None, ndirs=6, nb0=1)
    a, b = simulate(PhantomConfig(seed=1, **cfg)), simulate(PhantomConfig(seed=2, **cfg))
    a2 = simulate(PhantomConfig(seed=1, **cfg))
    assert not np.array_equal(a.wm, b.wm)
    np.testing.assert_array_equal(a.wm, a2.wm)
    assert a.mask.sum() > a.wm.sum() > 0 and not (a.wm & ~a.mask).any()


def test_random_bundles_locate_their_own_fibres(locates_own_fibres):
    from difftract.phantom.presets import random_layout

    for seed in range(6):
        layout = random_layout(np.random.default_rng(seed), n_bundles=6)
        for bundle in layout.bundles:
            locates_own_fibres(bundle, stride=7, label=(seed, bundle.name))


def test_crossing_rois_are_symmetric():
    p = simulate(PhantomConfig(preset="crossing", streamlines_per_bundle=40, snr=None))
    for b in p.bundles:
        assert b.head.sum() == b.tail.sum(), b.name


def test_noise_does_not_move_the_fibres():
    cfg = dict(preset="crossing", streamlines_per_bundle=20, seed=4)
    a, b = simulate(PhantomConfig(snr=10, **cfg)), simulate(PhantomConfig(snr=None, **cfg))
    for x, y in zip(a.streamlines, b.streamlines):
        np.testing.assert_array_equal(x, y)


def _all_phantoms(fibercup):
    yield fibercup
    yield simulate(PhantomConfig(preset="crossing", angles=(60, 120), streamlines_per_bundle=40))
    yield simulate(PhantomConfig(preset="random", seed=5, n_bundles=4, streamlines_per_bundle=40))


def test_ground_truth_streamlines_join_their_rois_inside_their_masks(fibercup):
    for phantom in _all_phantoms(fibercup):
        for b in phantom.bundles:
            first = endpoint_voxels(np.array([s[0] for s in b.streamlines]), phantom.shape)
            last = endpoint_voxels(np.array([s[-1] for s in b.streamlines]), phantom.shape)
            assert b.head[tuple(first.T)].all() and b.tail[tuple(last.T)].all(), b.name
            assert not (b.head & b.tail).any(), b.name
            visited = traversed_voxels(b.streamlines, phantom.shape)
            assert not (visited & ~b.mask).any(), b.name
            # The GT covers its mask: densely on fibercup (200 per bundle), less on 40-streamline test phantoms.
            coverage = (visited & b.mask).sum() / b.mask.sum()
            assert coverage > (0.99 if phantom is fibercup else 0.7), (b.name, coverage)
            steps = np.concatenate([np.linalg.norm(np.diff(s, axis=0), axis=1) for s in b.streamlines])
            assert np.allclose(steps * phantom.voxel_size, phantom.config.step_mm, rtol=0.05)


def test_fractions_and_peaks_are_consistent(fibercup):
    f, p = fibercup.fractions, fibercup.peaks
    assert f.min() >= 0 and f.sum(-1).max() <= 1 + 1e-5
    assert np.all(f[..., :-1] >= f[..., 1:] - 1e-6)  # sorted
    norms = np.linalg.norm(p, axis=-1)
    np.testing.assert_allclose(norms[f > 0], 1, atol=1e-5)
    assert np.all(norms[f == 0] == 0)
    assert not ((f[..., 0] >= fibercup.config.mask_threshold) & ~fibercup.wm).any()


def test_fibre_voxels_have_white_matter_fa_and_md(fibercup):
    """Acceptance: single-fibre FA 0.6-0.85 at b=1000, lower in crossings; MD 0.6-0.9e-3."""
    gtab = gradient_table(fibercup.bvals, bvecs=fibercup.bvecs)
    fit = TensorModel(gtab, fit_method="WLS").fit(fibercup.data, mask=fibercup.wm)
    f = fibercup.fractions
    single = (f[..., 0] >= 0.99) & (f[..., 1] == 0)
    crossing = (f[..., 0] >= 0.3) & (f[..., 1] >= 0.3)
    fa_single = fit.fa[single]
    assert single.sum() > 1000 and crossing.sum() > 30
    assert 0.6 <= np.median(fa_single) <= 0.85 and np.mean((fa_single >= 0.6) & (fa_single <= 0.85)) > 0.9
    assert np.median(fit.fa[crossing]) < np.median(fa_single) - 0.2
    md = fit.md[fibercup.wm]
    assert 0.6e-3 <= np.median(md) <= 0.9e-3 and np.mean((md >= 0.6e-3) & (md <= 0.9e-3)) > 0.9
    # The principal eigenvector follows the ground truth in single-fibre voxels.
    cos = np.abs(np.einsum("vi,vi->v", fit.evecs[single][..., 0], fibercup.peaks[single][:, 0]))
    assert np.median(np.degrees(np.arccos(np.clip(cos, 0, 1)))) < 5


def test_csd_resolves_the_crossing(crossing_noisefree):
    """CSD (DIPY, automatic response) finds both fibres within 10 degrees in crossing voxels."""
    from dipy.data import default_sphere
    from dipy.direction import peaks_from_model
    from dipy.reconst.csdeconv import ConstrainedSphericalDeconvModel, auto_response_ssst

    p = crossing_noisefree
    gtab = gradient_table(p.bvals, bvecs=p.bvecs)
    response, _ = auto_response_ssst(gtab, p.data, roi_radii=10, fa_thr=0.7)
    crossing = (p.fractions[..., 0] >= 0.3) & (p.fractions[..., 1] >= 0.3)
    peaks = peaks_from_model(ConstrainedSphericalDeconvModel(gtab, response, sh_order_max=8), p.data,
                             default_sphere, relative_peak_threshold=0.25, min_separation_angle=25,
                             mask=crossing, npeaks=3)
    found = peaks.peak_dirs[crossing]
    truth = p.peaks[crossing][:, :2]
    cos = np.abs(np.einsum("vpi,vti->vpt", found, truth)).max(axis=1)  # best peak for each true fibre
    ok = np.all(np.degrees(np.arccos(np.clip(cos, 0, 1))) <= 10, axis=1)
    assert crossing.sum() > 20 and ok.mean() > 0.9


def test_bad_configs_are_refused():
    with pytest.raises(ConfigError, match="unknown phantom preset"):
        simulate(PhantomConfig(preset="nope"))
    with pytest.raises(ConfigError, match="1 or 2 angles"):
        simulate(PhantomConfig(preset="crossing", angles=(30, 60, 90)))
    with pytest.raises(ConfigError, match="snr"):
        PhantomConfig(snr=-1)


def test_noise_free_twin_comes_from_the_same_fibres_tissue_and_dispersion():
    config = PhantomConfig(preset="crossing", seed=4, snr=15.0, streamlines_per_bundle=4)
    plain = simulate(config)
    twin = simulate(replace(config, noise_free_scheme=(plain.bvals, plain.bvecs)))
    # the noisy scan is unchanged, and the twin is the noise-free scan on the same scheme
    assert np.array_equal(twin.data, plain.data) and plain.noise_free is None
    np.testing.assert_array_equal(twin.noise_free, simulate(replace(config, snr=None)).data)
    # randomised tissue and dispersion are drawn once for both: without noise they coincide
    randomized = replace(config, randomize=True, snr=None)
    drawn = simulate(randomized)
    both = simulate(replace(randomized, noise_free_scheme=(drawn.bvals, drawn.bvecs)))
    np.testing.assert_allclose(both.noise_free, both.data, rtol=1e-6)
    assert not np.array_equal(both.noise_free, np.zeros_like(both.noise_free))
    with pytest.raises(ConfigError, match="noise_free_scheme"):
        PhantomConfig(noise_free_scheme=(np.zeros(3), np.zeros((2, 3))))
