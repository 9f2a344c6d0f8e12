"""Randomised phantoms: samplers' ranges, determinism, dispersion, and randomize off = unchanged."""

from __future__ import annotations

import hashlib
import sys

import numpy as np
import pytest
from dipy.core.gradients import gradient_table
from dipy.reconst.dti import TensorModel, fractional_anisotropy, mean_diffusivity

from difftract.errors import ConfigError
from difftract.phantom import PhantomConfig, simulate
from difftract.phantom.acquisition import AcquisitionRanges, AcquisitionSampler
from difftract.phantom.randomize import (FIBRE_PARAMETERS, FibreSamples, TissueRanges, TissueSampler,
                                         tissue_tensor, watson_axes, watson_mean_cos2)
from difftract.phantom.signal import fibre_signal, make_scheme

simulate_module = sys.modules["difftract.phantom.simulate"]  # the package's `simulate` is the function
TINY = dict(preset="crossing", streamlines_per_bundle=5, supersample=2)


def test_tissue_draws_stay_in_their_ranges_everywhere():
    ranges = TissueRanges()
    for seed in range(20):
        draw = TissueSampler(ranges).draw(np.random.default_rng(seed), 3, (6, 5, 4))
        voxels = np.arange(6 * 5 * 4)
        for k in range(3):
            for name in FIBRE_PARAMETERS:
                lo, hi = getattr(ranges, name)
                v = draw.value(name, k, voxels)
                assert lo <= v.min() and v.max() <= hi, (seed, name)
            fibre = draw.fibre(k, voxels)
            assert np.all(fibre.d_perp < fibre.d_par)
        t = draw.tissue
        for name in ("d_background", "d_csf", "s0_fibre", "bias"):
            lo, hi = getattr(ranges, name)
            assert lo <= getattr(t, name) <= hi, name
        assert ranges.s0_csf_ratio[0] <= t.s0_csf / t.s0_fibre <= ranges.s0_csf_ratio[1]


def test_tissue_varies_smoothly_in_space():
    draw = TissueSampler(TissueRanges(spatial_spread=1.0)).draw(np.random.default_rng(0), 1, (20, 20, 20))
    d_par = draw.value("d_par", 0, np.arange(20**3)).reshape(20, 20, 20)
    steps = np.abs(np.diff(d_par, axis=0))
    assert d_par.std() > 0 and steps.max() < 0.2 * (d_par.max() - d_par.min())  # no voxel-to-voxel jumps


def test_acquisition_draws_stay_in_their_ranges_and_cover_them():
    r = AcquisitionRanges()
    sampler = AcquisitionSampler(r)
    draws = [sampler.draw(np.random.default_rng(seed)) for seed in range(300)]
    for a in draws:
        assert 1 <= len(a.bvals) <= 3 and len(a.ndirs) == len(a.bvals)
        assert all(700 <= b <= 3000 for b in a.bvals) and np.all(np.diff(a.bvals) >= r.min_shell_gap)
        assert all(6 <= n <= 150 for n in a.ndirs) and 1 <= a.nb0 <= 10
        assert 8 <= a.snr <= 50 and 1 <= a.coils <= 32 and 1.25 <= a.voxel_size <= 2.5
    assert {len(a.bvals) for a in draws} == {1, 2, 3}
    assert {a.nb0 for a in draws} == set(range(1, 11))
    rician = np.mean([a.coils == 1 for a in draws])
    assert abs(rician - 0.5) < 5 * np.sqrt(0.25 / len(draws))   # binomial, 5 standard errors
    assert max(a.coils for a in draws) >= 24 and min(a.snr for a in draws) < 10 and max(a.snr for a in draws) > 40


@pytest.mark.parametrize("kwargs", [dict(bvals=(700, 900), shells=(1, 3)), dict(ndirs=(3, 10)),
                                    dict(snr=(0, 10)), dict(rician_probability=2.0)])
def test_bad_acquisition_ranges_refused(kwargs):
    with pytest.raises(ConfigError):
        AcquisitionRanges(**kwargs)


@pytest.mark.parametrize("kwargs", [dict(f_intra=(0.5, 1.5)), dict(d_par=(2e-3, 1e-3)), dict(kappa=(0.0, 5.0)),
                                    dict(spatial_spread=-1.0)])
def test_bad_tissue_ranges_refused(kwargs):
    with pytest.raises(ConfigError):
        TissueRanges(**kwargs)


def test_randomized_phantom_is_reproducible_and_recorded():
    a = simulate(PhantomConfig(seed=11, randomize=True, **TINY))
    b = simulate(PhantomConfig(seed=11, randomize=True, **TINY))
    c = simulate(PhantomConfig(seed=12, randomize=True, **TINY))
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(a.bvals, b.bvals)
    assert a.summary() == b.summary() and a.summary()["randomized"] != c.summary()["randomized"]
    record = a.summary()["randomized"]
    assert len(record["tissue"]["bundles"]) == len(a.bundles) == 2
    shells = sorted({int(round(v)) for v in a.bvals if v > 50})
    assert shells == [int(v) for v in record["acquisition"]["bvals"]]
    assert a.voxel_size == pytest.approx(record["acquisition"]["voxel_size"])


def test_randomize_leaves_the_geometry_alone_at_a_fixed_voxel_size():
    plain = simulate(PhantomConfig(seed=4, snr=None, **TINY))
    rand = simulate(PhantomConfig(seed=4, snr=None, randomize=True, voxel_size=2.0, **TINY))
    np.testing.assert_array_equal(plain.fractions, rand.fractions)
    assert len(plain.streamlines) == len(rand.streamlines)
    for x, y in zip(plain.streamlines, rand.streamlines):
        np.testing.assert_array_equal(x, y)
    assert not np.allclose(plain.data[..., 0], rand.data[..., 0])
    assert rand.acquisition.snr is None and rand.acquisition.voxel_size is None


def test_every_preset_randomizes_and_fibercup_keeps_its_voxel_size():
    p = simulate(PhantomConfig(preset="fibercup", seed=1, randomize=True, streamlines_per_bundle=5, supersample=1))
    assert p.voxel_size == 2.0 and p.acquisition.voxel_size is None and p.summary()["randomized"]
    r = simulate(PhantomConfig(preset="random", seed=1, randomize=True, n_bundles=2, streamlines_per_bundle=5,
                               supersample=1))
    assert r.voxel_size == pytest.approx(r.acquisition.voxel_size)
    with pytest.raises(ConfigError, match="voxel_size"):
        PhantomConfig(preset="fibercup", voxel_size=1.5)


def test_watson_axes_have_the_closed_form_second_moment():
    rng = np.random.default_rng(0)
    n = 40_000
    mean = np.tile([0.0, 0.6, 0.8], (n, 1))
    for kappa in (1e-4, 0.5, 4.0, 30.0, 200.0):
        axes = watson_axes(mean, np.full(n, kappa), rng)
        assert np.allclose(np.linalg.norm(axes, axis=1), 1.0)
        cos2 = (axes @ mean[0]) ** 2
        # sample mean of a [0, 1] variable: 5 standard errors
        assert abs(cos2.mean() - watson_mean_cos2(kappa)) < 5 * cos2.std() / np.sqrt(n) + 1e-12, kappa
    assert watson_mean_cos2(1e-6) == pytest.approx(1 / 3, abs=1e-6)
    assert watson_mean_cos2(1e4) == pytest.approx(1 - 1e-4, rel=1e-6)  # 1 - 1/kappa at large kappa


def _samples(kappa: float, n: int) -> FibreSamples:
    full = np.ones(n)
    return FibreSamples(d_par=1.9e-3 * full, d_perp=0.5e-3 * full, f_intra=0.6 * full, f_extra=0.4 * full,
                        f_free=0.05 * full, kappa=kappa * full, d_free=3e-3)


def test_dispersion_lowers_fa_as_the_tensor_predicts():
    # a voxel of many dispersed samples, fitted at b = 10 where the signal is the tensor's
    # to ~0.3% (the kurtosis term b * Var(D) / 2 over D); sampling error ~1/sqrt(n)
    _, dirs = make_scheme((1000.0,), 30, 1, np.random.default_rng(0))
    bvals, bvecs = np.r_[0.0, np.full(30, 10.0)], dirs
    model = TensorModel(gradient_table(bvals, bvecs=bvecs, b0_threshold=5))
    rng, n = np.random.default_rng(1), 20_000
    mean = np.tile([1.0, 0.0, 0.0], (n, 1))
    fas = []
    for kappa in (1e4, 30.0, 8.0, 2.0):
        fibre = _samples(kappa, n)
        signal = fibre_signal(watson_axes(mean, fibre.kappa, rng), bvals, bvecs, fibre).mean(axis=0)
        fit = model.fit(signal)
        evals = tissue_tensor(_samples(kappa, 1))
        fa, md = fractional_anisotropy(evals), mean_diffusivity(evals)
        assert fit.fa == pytest.approx(fa[0], abs=0.02) and fit.md == pytest.approx(md[0], rel=0.01), kappa
        fas.append(fit.fa)
    assert fas[0] > fas[1] > fas[2] > fas[3] and fas[0] - fas[3] > 0.3


def test_default_ranges_give_the_documented_fa_and_md():
    # the bundles' tissue across many subjects (the benchmark adds the per-voxel fields)
    fa, md = [], []
    for seed in range(150):
        draw = TissueSampler().draw(np.random.default_rng(seed), 4, (2, 2, 2))
        evals = tissue_tensor(draw.fibre(0, np.arange(8)))
        f, m = fractional_anisotropy(evals), mean_diffusivity(evals)
        fa.append(f), md.append(m)
    fa, md = np.concatenate(fa), np.concatenate(md)
    assert 0.3 <= np.percentile(fa, 5) and np.percentile(fa, 95) <= 0.95 and fa.min() < 0.4 and fa.max() > 0.9
    assert 0.5e-3 <= np.percentile(md, 5) and np.percentile(md, 95) <= 1.3e-3
    assert md.min() < 0.6e-3 and md.max() > 1.2e-3


# Fingerprints of phantoms simulated on main before randomisation existed (commit d12f03e).
# Floats are compared through sums with tolerances far below any real change (a changed
# stream or formula moves them by > 1e-7 relative), above rounding differences between
# CPUs' exp implementations (~1e-16 relative); boolean arrays exactly.
BEFORE = [
    (dict(preset="crossing", streamlines_per_bundle=10, seed=3), "cec61e3a8604f1bb",
     [(88951173.54581451, 4358057480.674164), (13.946220148193929, 465.0577621267703),
      (556.1481509804726, 27030.481603860855), (362.0000000000049, 16961.000000000226),
      (17978.848966121674, 883354.6305319071)]),
    (dict(preset="crossing", angles=(60, 120), bvals=(1000, 2000), ndirs=(30, 60), nb0=3, snr=10,
          streamlines_per_bundle=10), "9c79cbc99d386495",
     [(162802173.25052786, 7980801533.892114), (45.290516664165686, 2199.483823676016),
      (745.7777812480927, 36591.42609151825), (792.6935740709332, 39138.05692636978),
      (27039.02241420746, 1315982.9485324621)]),
]


def _fingerprint(a) -> tuple[float, float]:
    a = np.asarray(a, dtype=np.float64).ravel()
    return float(a.sum()), float(a @ (np.arange(a.size) % 97 + 1.0))


@pytest.mark.parametrize("config,masks,sums", BEFORE)
def test_phantoms_without_randomize_are_unchanged(config, masks, sums):
    p = simulate(PhantomConfig(**config))
    h = hashlib.sha256()
    for a in [p.mask, p.wm] + [m for b in p.bundles for m in (b.mask, b.head, b.tail)]:
        h.update(np.packbits(a).tobytes())
    assert h.hexdigest()[:16] == masks
    arrays = (p.data, p.bvecs, p.fractions, p.peaks, np.concatenate(p.streamlines))
    for a, expected in zip(arrays, sums):
        scale = np.abs(np.asarray(a, dtype=np.float64)).sum() * 97
        np.testing.assert_allclose(_fingerprint(a), expected, rtol=1e-10, atol=1e-12 * scale)


def test_smaller_signal_chunks_give_the_same_bits(monkeypatch):
    # float64 voxel sums, before the float32 cast could hide a changed summation order
    from difftract.phantom import voxelize
    from difftract.phantom.geometry import make_tube
    from difftract.phantom.presets import crossing
    from difftract.phantom.signal import Tissue

    layout = crossing(streamlines_per_bundle=5)
    coverages = [voxelize.cover(make_tube(b), layout.shape, layout.voxel_size, 3) for b in layout.bundles]
    voxelize.share_overlaps(coverages, 3)
    n_vox = int(np.prod(layout.shape))
    bvals, bvecs = make_scheme((1000.0,), 60, 2)
    args = (coverages, np.full(n_vox, 0.5), bvals, bvecs, Tissue(), n_vox)
    whole = simulate_module._signal(*args)
    monkeypatch.setattr(simulate_module, "CHUNK_ELEMENTS", 62 * 700)  # ~700-sample chunks, cut between voxels
    assert len(simulate_module._chunks(coverages[0].voxel, 700)) > 10
    np.testing.assert_array_equal(simulate_module._signal(*args), whole)
