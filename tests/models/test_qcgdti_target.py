"""QCG-DTI's per-shell reference: the tensor one shell measures, interpolated in b for simulated subjects."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from difftract.errors import ConfigError
from difftract.models.qcgdti.data import (PatchDataset, interpolate_shells, phantom_arrays, reference_tensor,
                                          shell_index, shell_references, subject_from_arrays, truth_scheme)
from difftract.phantom import PhantomConfig, simulate
from difftract.phantom.signal import make_scheme
from difftract.reconst import tensor as T


def _fa(lt: np.ndarray) -> np.ndarray:
    evals, _ = T.decompose(torch.from_numpy(lt.astype(np.float64)))
    return T.fractional_anisotropy(evals.clamp_min(0.0)).numpy()


def test_interpolation_is_exact_at_the_nodes_and_for_a_quadratic_in_b():
    nodes = np.array([1000.0, 2000.0, 3000.0])
    rng = np.random.default_rng(0)
    a, b, c = (rng.standard_normal((4, 6)) for _ in range(3))
    tensors = np.stack([a + b * x / 1000 + c * (x / 1000) ** 2 for x in nodes], axis=-2)     # (4, 3, 6)
    for k, x in enumerate(nodes):
        np.testing.assert_allclose(interpolate_shells(nodes, tensors, x), tensors[:, k], rtol=1e-6)
    for x in (500.0, 1500.0, 2700.0):   # a polynomial of degree <= 2 in b: reproduced to float32 rounding
        expected = a + b * x / 1000 + c * (x / 1000) ** 2
        np.testing.assert_allclose(interpolate_shells(nodes, tensors, x), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="b=200"):
        interpolate_shells(nodes, tensors, 200.0)


def test_a_b_value_finds_its_shell_within_the_shell_tolerance():
    shells = np.array([1000.0, 2000.0])
    assert shell_index(shells, 1040.0) == 0 and shell_index(shells, 1995.0) == 1
    with pytest.raises(ConfigError, match="b=1500"):
        shell_index(shells, 1500.0)


@pytest.fixture(scope="module")
def twin():
    """A randomised crossing phantom with its noise-free signal on 1000, 1500, 2000 and 3000."""
    bvals, bvecs = make_scheme((1000.0, 1500.0, 2000.0, 3000.0), (60,) * 4, 1, np.random.default_rng(0),
                               start="lattice")
    p = simulate(PhantomConfig(preset="crossing", seed=5, snr=20, randomize=True, noise_free_scheme=(bvals, bvecs)))
    return p, bvals, bvecs


def test_the_apparent_tensor_changes_with_b_and_interpolation_follows_it(twin):
    p, bvals, bvecs = twin
    shells, tensors = shell_references(p.noise_free, bvals, bvecs, p.mask)
    assert shells.tolist() == [1000.0, 1500.0, 2000.0, 3000.0]
    fa = _fa(tensors[p.mask])                       # (voxels, 4)
    wm = fa[:, 0] > 0.4
    assert wm.sum() > 50
    rise = fa[wm, 3] - fa[wm, 0]
    assert rise.mean() > 0.03                      # non-Gaussian tissue: the FA one shell measures depends on b
    nodes = [0, 2, 3]                              # 1500 from 1000, 2000 and 3000
    between = _fa(interpolate_shells(shells[nodes], tensors[..., nodes, :], 1500.0)[p.mask])
    # a deterministic noise-free simulation: measured 0.0016 here (the midpoint of 1000 and 2000, a
    # linear interpolation, is 0.0036 off; a wrong node order or weight, tens of times more)
    assert np.abs(between[wm] - fa[wm, 1]).mean() < 0.0025


def _box_of(target: np.ndarray, reference: np.ndarray, patch: int) -> tuple[int, int] | None:
    """The (corner, shell) of ``reference`` (X, Y, Z, K, 6) whose patch is ``target`` (6, P, P, P), if any."""
    X, Y, Z, K, _ = reference.shape
    for k in range(K):
        for corner in np.ndindex(X - patch + 1, Y - patch + 1, Z - patch + 1):
            box = tuple(slice(c, c + patch) for c in corner)
            if np.allclose(np.moveaxis(reference[box + (k,)], -1, 0) * 1e3, target, rtol=1e-6, atol=0):
                return corner, k
    return None


def test_a_patch_of_the_shell_target_is_the_reference_of_its_six_dwis_shell():
    p = simulate(PhantomConfig(preset="crossing", seed=3, bvals=(1000.0, 1500.0), ndirs=(90, 60), nb0=2, snr=30,
                               noise_free_scheme=truth_scheme()))
    assert "shell_reference" not in phantom_arrays(p, pool_size=2)       # only for the per-shell target
    arrays = phantom_arrays(p, pool_size=6, per_shell=True)
    assert arrays["shell_bvals"].tolist() == [1000.0, 1500.0]
    clean_bvals, clean_bvecs = truth_scheme()
    nodes, tensors = shell_references(p.noise_free, clean_bvals, clean_bvecs, p.mask)
    np.testing.assert_allclose(arrays["shell_reference"][..., 0, :], tensors[..., 0, :], rtol=1e-5, atol=1e-9)
    fa = _fa(np.concatenate([tensors[p.mask][:, :2], arrays["shell_reference"][p.mask][:, 1:]], axis=1))
    wm = fa[:, 0] > 0.4                              # b = 1500 lies between the 1000 and 2000 fits
    assert fa[wm, 0].mean() < fa[wm, 2].mean() < fa[wm, 1].mean()
    subject = subject_from_arrays("s", arrays, patch=16)      # (24, 24, 8) padded to 16 in z: random boxes
    all_shells = PatchDataset([subject], 8, patch=16, seed=2, augment=False)
    per_shell = PatchDataset([subject], 8, patch=16, seed=2, augment=False, target="shell")
    shells_seen = set()
    for index in range(8):
        a, s = all_shells[index], per_shell[index]
        assert torch.equal(a["pairs"], s["pairs"])             # the same input, another target
        found = _box_of(s["target"].numpy(), subject.shell_reference, 16)
        assert found is not None
        shells_seen.add(found[1])
        assert not torch.allclose(a["target"], s["target"])
    assert shells_seen == {0, 1}
    subject.shell_reference = None
    with pytest.raises(ConfigError, match="per-shell"):
        PatchDataset([subject], 2, patch=16, target="shell")


def test_a_shell_outside_the_noise_free_shells_is_refused_only_for_the_per_shell_target():
    p = simulate(PhantomConfig(preset="crossing", seed=3, bvals=(4000.0,), ndirs=(60,), nb0=1, snr=30,
                               noise_free_scheme=truth_scheme()))
    assert phantom_arrays(p, pool_size=2)["reference"].shape[-1] == 6      # the three-shell target trains as before
    with pytest.raises(ConfigError, match="b=4000"):
        phantom_arrays(p, pool_size=2, per_shell=True)
