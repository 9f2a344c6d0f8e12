"""benchmarks/_mrtrix.py: the basis conversion, seed grid, MDF pairing and Dice that bench_vs_mrtrix relies on."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import _mrtrix as mx  # noqa: E402

from difftract.reconst.sh import sh_basis  # noqa: E402
from difftract.tracking.seeding import grid_seeds  # noqa: E402

needs_mrtrix = pytest.mark.skipif(mx.mrtrix_tools() is None, reason=mx.INSTALL_HINT)
AFFINE = np.array([[2.0, 0, 0, -7.0], [0, 2.0, 0, 3.0], [0, 0, 2.0, -1.0], [0, 0, 0, 1]])


def _tournier(directions: np.ndarray, lmax: int) -> np.ndarray:
    from dipy.core.sphere import Sphere
    from dipy.reconst.shm import real_sh_tournier

    sphere = Sphere(xyz=directions)
    return real_sh_tournier(lmax, sphere.theta, sphere.phi, legacy=False)[0]


def test_mrtrix_basis_gives_the_same_amplitudes():
    rng = np.random.default_rng(0)
    coeffs = rng.normal(size=(5, 45))
    dirs = mx.fibonacci_directions(100)
    ours = coeffs @ sh_basis(dirs, 8, legacy=False)[0].T
    theirs = mx.to_mrtrix_basis(coeffs) @ _tournier(dirs, 8).T
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-12 * np.abs(ours).max())
    # and it is not the identity: the bases order and sign their harmonics differently
    assert np.abs(mx.to_mrtrix_basis(coeffs) - coeffs).max() > 0.1


def test_fibonacci_directions_are_unit_and_spread():
    d = mx.fibonacci_directions(64)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0)
    cos = d @ d.T - 2 * np.eye(64)
    assert np.degrees(np.arccos(cos.max())) > 15      # no two closer than 15 degrees


def test_subsample_mask_keeps_every_kth_voxel():
    mask = np.zeros((6, 5, 4), bool)
    mask[1:5, 1:4, 1:3] = True                        # 24 voxels
    sub = mx.subsample_mask(mask, 10)
    assert sub.sum() == 8 and not np.any(sub & ~mask)  # k = 3
    assert np.array_equal(mx.subsample_mask(mask, None), mask)


def test_world_and_voxel_round_trip():
    p = np.array([[0.0, 0, 0], [1.5, 2.25, -0.5]])
    np.testing.assert_allclose(mx.to_voxel(mx.to_world(p, AFFINE), AFFINE), p, atol=1e-12)
    np.testing.assert_allclose(mx.to_world(p, AFFINE)[0], [-7.0, 3.0, -1.0])


def test_mdf_is_direction_free_and_in_mm():
    a = np.stack([np.linspace(0, 10, 11), np.zeros(11), np.zeros(11)], axis=1)
    assert mx.mdf(a, a[::-1]) == pytest.approx(0.0, abs=1e-12)
    assert mx.mdf(a, a + [0, 1.0, 0]) == pytest.approx(1.0)
    # different sampling of the same line: resampling by arc length makes them equal
    b = np.stack([np.linspace(0, 10, 41), np.zeros(41), np.zeros(41)], axis=1)
    assert mx.mdf(a, b) == pytest.approx(0.0, abs=1e-12)


def test_paired_agreement_counts_pairs_and_thresholds():
    line = np.stack([np.linspace(0, 10, 11), np.zeros(11), np.zeros(11)], axis=1)
    ours = {(0,): line, (1,): line, (2,): line, (3,): line}
    theirs = {(0,): line, (1,): line + [0, 0.4, 0], (2,): line + [0, 0.8, 0], (4,): line}
    r = mx.paired_agreement(ours, theirs)
    assert (r["paired"], r["only_ours"], r["only_theirs"]) == (3, 1, 1)
    assert r["within_1mm"] == pytest.approx(1.0)
    assert r["within_0.5mm"] == pytest.approx(2 / 3)


def _tiny_fod(tmp_path: Path, fibre=(1.0, 0.0, 0.0)) -> tuple[Path, Path, np.ndarray]:
    """A 5x4x3 grid of one sharp fibre along ``fibre`` (data-array frame), and a mask."""
    dirs = mx.fibonacci_directions(300)
    amplitude = np.abs(dirs @ (np.asarray(fibre) / np.linalg.norm(fibre))) ** 20
    B = sh_basis(dirs, 8, legacy=False)[0]
    coeffs = np.linalg.lstsq(B, amplitude, rcond=None)[0]
    fod = np.broadcast_to(coeffs, (5, 4, 3, 45)).copy()
    wm = np.zeros((5, 4, 3), bool)
    wm[1:4, 1:3, 1] = True
    fod_path, wm_path = tmp_path / "fod.nii", tmp_path / "wm.nii.gz"
    nib.save(nib.Nifti1Image(mx.to_mrtrix_basis(fod).astype(np.float32), AFFINE), fod_path)
    nib.save(nib.Nifti1Image(wm.astype(np.uint8), AFFINE), wm_path)
    return fod_path, wm_path, fod


@needs_mrtrix
def test_sh2amp_reads_the_converted_fod_as_ours(tmp_path):
    # an oblique fibre: a flip of any axis between the two frames would show
    fod_path, _, fod = _tiny_fod(tmp_path, fibre=(1.0, 0.6, 0.3))
    dirs = mx.fibonacci_directions(32)
    theirs = mx.sh2amp(fod_path, dirs, tmp_path)
    ours = fod @ sh_basis(dirs, 8, legacy=False)[0].T
    assert np.abs(theirs - ours).max() <= 1e-5 * np.abs(ours).max()


@needs_mrtrix
def test_tckgen_grid_seeds_are_grid_seeds(tmp_path):
    fod_path, wm_path, _ = _tiny_fod(tmp_path)
    wm = np.asarray(nib.load(wm_path).dataobj) > 0
    settings = mx.TckgenSettings(step_mm=0.5, angle_deg=45, min_len_mm=0, max_len_mm=50, cutoff=0.05, threads=1)
    run = mx.tckgen("iFOD2", fod_path, wm_path, 2, wm_path, settings, tmp_path, AFFINE, "grid")
    assert run.seeds == 8 * wm.sum()
    ours = set(mx.seed_keys(mx.to_world(grid_seeds(wm, 2).numpy(), AFFINE)))
    reported = mx.seed_keys(run.seed_world)
    assert len(reported) > 0.5 * run.seeds and all(k in ours for k in reported)
    # streamlines come back in voxel coordinates, along the fibre (x) and inside the mask's slab (z = 1)
    extent = np.median([np.ptp(s, axis=0) for s in run.streamlines], axis=0)
    assert extent[0] > 2 * max(extent[1], extent[2])
    assert np.all(np.abs(np.concatenate(run.streamlines)[:, 2] - 1) <= 0.5)


def test_paired_agreement_scores_pairs_leaving_the_seed_the_same_way():
    t = np.linspace(-5, 5, 11)[:, None]
    along_x = t * [1.0, 0, 0]
    along_y = t * [0, 1.0, 0]
    seed = (0.0, 0.0, 0.0)
    r = mx.paired_agreement({seed: along_x, (1.0, 1.0, 1.0): along_x + 1}, {seed: along_y, (1.0, 1.0, 1.0): along_x + 1.2})
    assert r["same_start"] == pytest.approx(0.5)       # the first pair left the seed along x and y
    assert r["within_1mm"] == pytest.approx(0.5)
    assert r["within_1mm_same_start"] == pytest.approx(1.0)


def test_hausdorff_takes_the_worst_point_where_mdf_takes_the_mean():
    line = np.stack([np.linspace(0, 10, 11), np.zeros(11), np.zeros(11)], axis=1)
    bent = line.copy()
    bent[-1, 1] = 2.0                                   # one end 2 mm off: the mean moves far less
    assert mx.hausdorff(line, line[::-1]) == pytest.approx(0.0)
    assert mx.hausdorff(line, bent) == pytest.approx(2.0)
    assert mx.mdf(line, bent) < 1.0
    r = mx.paired_agreement({(0,): line, (1,): line}, {(0,): line + [0, 0.4, 0], (1,): bent})
    assert r["within_1mm"] == pytest.approx(1.0)
    assert r["hausdorff_within_1mm"] == pytest.approx(0.5)
