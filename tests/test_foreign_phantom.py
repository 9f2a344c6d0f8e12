"""benchmarks/foreign: difftract's geometry with DIPY's signal, readable like any phantom, marked as test data."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from dipy.core.gradients import gradient_table
from dipy.sims.voxel import multi_tensor, single_tensor, sticks_and_ball

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

from foreign import ForeignConfig, build_foreign, save_foreign  # noqa: E402
from foreign.dipy_signal import foreign_signal  # noqa: E402

from difftract.errors import ConfigError  # noqa: E402
from difftract.eval.tractometer import load_scoring, score  # noqa: E402
from difftract.io.dwi import load_subject  # noqa: E402
from difftract.io.tractogram import load_tractogram  # noqa: E402
from difftract.phantom.splits import check_training_subject  # noqa: E402

# a small scheme and few streamlines keep the build to a few seconds
SMALL = dict(layout="crossroads", seed=9001, snr=20.0, bvals=(1000.0, 2500.0), ndirs=(6, 8), nb0=1,
             streamlines_per_bundle=6)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    config = ForeignConfig(**SMALL)
    foreign = build_foreign(config)
    out = save_foreign(foreign, config, tmp_path_factory.mktemp("foreign") / "crossroads")
    return config, foreign, out


def volume(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def test_written_fractions_and_directions_are_the_signal_compartments(built):
    _, foreign, out = built
    c, mask = foreign.compartments, volume(out / "mask.nii.gz") > 0
    fractions = volume(out / "gt" / "fractions.nii.gz").reshape(-1, 3)
    peaks = volume(out / "gt" / "peaks.nii.gz").reshape(-1, 3, 3)
    np.testing.assert_array_equal(c.fibre, fractions)
    held = fractions > 0
    np.testing.assert_allclose(np.linalg.norm(c.directions[held], axis=-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.abs(np.sum(c.directions * peaks, axis=-1))[held], 1.0, atol=1e-6)
    total = c.fibre.sum(axis=1) + c.gm + c.csf          # every brain voxel is fully shared out
    np.testing.assert_allclose(total[mask.reshape(-1)], 1.0, atol=1e-6)
    assert np.all(total[~mask.reshape(-1)] == 0)
    assert np.sum(held.sum(axis=1) == 3) > 0 and c.csf.max() == 1.0   # 3-way crossings and pure CSF exist
    # the fibre eigenvalues drift between the two profiles, (1.5, .35, .35) and (1.8, .2, .2) um^2/ms
    assert 1.5e-3 - 1e-15 <= c.evals[:, 0].min() < c.evals[:, 0].max() <= 1.8e-3 + 1e-15
    np.testing.assert_allclose(c.evals[:, 1], 0.35e-3 - (c.evals[:, 0] - 1.5e-3) * 0.5, rtol=1e-9)


def test_signal_is_dipy_multi_tensor_recomputed_from_the_written_ground_truth(built):
    config, foreign, out = built
    p, t, c = foreign.phantom, config.tissue, foreign.compartments
    gtab = gradient_table(p.bvals, bvecs=p.bvecs)
    fractions = volume(out / "gt" / "fractions.nii.gz").reshape(-1, 3).astype(np.float64)
    peaks = volume(out / "gt" / "peaks.nii.gz").reshape(-1, 3, 3).astype(np.float64)
    n_pop = (fractions > 0).sum(axis=1)
    picks = [np.flatnonzero(n_pop == k)[len(np.flatnonzero(n_pop == k)) // 2] for k in (1, 2, 3)]
    for v in picks:
        pops = np.flatnonzero(fractions[v] > 0)
        f_gm, f_csf = c.gm[v], c.csf[v]
        w = np.concatenate([fractions[v, pops] * t.s0_wm, [f_gm * t.s0_gm, f_csf * t.s0_csf]])
        dirs = peaks[v, pops] / np.linalg.norm(peaks[v, pops], axis=1, keepdims=True)
        mevals = [c.evals[v]] * len(pops) + [[t.d_gm] * 3, [t.d_csf] * 3]
        expected, _ = multi_tensor(gtab, np.array(mevals), S0=w.sum(), angles=np.vstack([dirs, np.eye(3)[:2]]),
                                   fractions=100 * w / w.sum(), snr=None)
        # float32 storage: relative rounding 6e-8
        np.testing.assert_allclose(foreign.clean.reshape(-1, len(p.bvals))[v], expected, rtol=1e-6)
    iso = np.flatnonzero((n_pop == 0) & (c.csf > 0) & (c.gm > 0))[0]
    expected = sum(f * s0 * single_tensor(gtab, S0=1.0, evals=np.full(3, d))
                   for f, s0, d in ((c.gm[iso], t.s0_gm, t.d_gm), (c.csf[iso], t.s0_csf, t.d_csf)))
    np.testing.assert_allclose(foreign.clean.reshape(-1, len(p.bvals))[iso], expected, rtol=1e-6)


def test_sticks_model_is_dipy_sticks_and_ball_plus_balls(built):
    config, foreign, _ = built
    p, t, c = foreign.phantom, config.tissue, foreign.compartments
    v = int(np.flatnonzero((c.fibre > 0).sum(axis=1) == 2)[0])
    one = replace(c, fibre=c.fibre[[v]], directions=c.directions[[v]], evals=c.evals[[v]], gm=c.gm[[v]],
                  csf=c.csf[[v]])
    got = foreign_signal(p.bvals, p.bvecs, one, t, "sticks")[0]
    gtab = gradient_table(p.bvals, bvecs=p.bvecs)
    f = c.fibre[v, :2]
    expected, _ = sticks_and_ball(gtab, d=t.d_stick, S0=t.s0_wm * f.sum(), angles=c.directions[v, :2],
                                  fractions=100 * t.stick_share * f / f.sum(), snr=None)
    for f, s0, d in ((c.gm[v], t.s0_gm, t.d_gm), (c.csf[v], t.s0_csf, t.d_csf)):
        expected = expected + f * s0 * np.exp(-p.bvals * d)
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_the_directory_reads_like_any_phantom(built):
    _, foreign, out = built
    p = foreign.phantom
    dwi = load_subject(out)
    assert dwi.data.shape == p.data.shape and dwi.mask.sum() == p.mask.sum()
    np.testing.assert_array_equal(dwi.signal.rows, p.data[p.mask])       # load_dwi holds the mask's voxels
    np.testing.assert_allclose(np.asarray(dwi.bvecs), p.bvecs, atol=1e-7)   # .bvec text holds 8 decimals
    scoring = json.loads((out / "gt" / "scoring.json").read_text())
    names = [b.name for b in p.bundles]
    assert sorted(scoring) == sorted(names)
    for entry in scoring.values():
        assert all((out / "gt" / entry[k]).exists() for k in ("head", "tail", "gt_mask"))
    truth = list(load_tractogram(out / "tractogram.trk").streamlines)
    scores = score(truth, load_scoring(out)).scores
    assert scores["VB"] == len(names) and scores["VS_ratio"] == 1.0
    record = json.loads((out / "dwi.json").read_text())
    assert record["test_data"] is True and record["seed"] == 9001
    assert record["params"]["signal"].startswith("dipy.sims.voxel.multi_tensor")
    with pytest.raises(ConfigError, match="is test data"):      # training refuses it
        check_training_subject(out)


def test_noise_is_dipy_rician_at_the_asked_snr(built):
    config, foreign, _ = built
    p = foreign.phantom
    background = p.data[~p.mask]                     # zero signal: Rayleigh, mean sigma sqrt(pi/2)
    sigma = config.tissue.s0_wm / config.snr
    # ~8,000 voxels x 15 volumes: the mean's relative standard error is ~0.2%
    assert abs(background.mean() / (sigma * np.sqrt(np.pi / 2)) - 1) < 0.02
    assert not np.array_equal(p.data, foreign.clean)


def test_same_seed_same_signal_and_training_seeds_are_refused(built):
    config, foreign, _ = built
    again = build_foreign(config)
    np.testing.assert_array_equal(again.phantom.data, foreign.phantom.data)
    with pytest.raises(ConfigError, match="test seed"):
        ForeignConfig(**{**SMALL, "seed": 1001})


def test_the_script_writes_a_phantom_and_refuses_a_training_seed(tmp_path):
    script = BENCH / "foreign" / "build.py"
    args = ["--layout", "crossroads", "--bvals", "1000", "--ndirs", "6", "--nb0", "1",
            "--streamlines-per-bundle", "3"]
    # both at once: they write to different folders, and each interpreter's start-up is most of its time
    bad, good = (subprocess.Popen([sys.executable, str(script), str(tmp_path / name), "--seed", seed, *args],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for name, seed in (("bad", "5"), ("good", "9001")))
    bad_err, good_err = bad.communicate()[1], good.communicate()[1]
    assert bad.returncode == 2 and "must be a test seed" in bad_err
    assert not (tmp_path / "bad").exists()
    assert good.returncode == 0, good_err[-2000:]
    record = json.loads((tmp_path / "good" / "dwi.json").read_text())
    assert record["test_data"] is True and record["seed"] == 9001
    assert (tmp_path / "good" / "gt" / "scoring.json").is_file()
