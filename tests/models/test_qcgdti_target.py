"""QCG-DTI's per-shell reference: the tensor one shell measures, interpolated in b for simulated subjects."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from difftract.errors import ConfigError
from difftract.models.qcgdti.data import (PatchDataset, interpolate_shells, phantom_arrays, reference_tensor,
                                          shell_references, subject_from_arrays, truth_scheme)
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


def test_a_patch_of_the_shell_target_is_the_reference_of_its_six_dwis_shell():
    p = simulate(PhantomConfig(preset="crossing", seed=3, bvals=(1000.0, 2000.0), ndirs=(90, 60), nb0=2, snr=30,
                               noise_free_scheme=truth_scheme()))
    arrays = phantom_arrays(p, pool_size=6)
    assert arrays["shell_bvals"].tolist() == [1000.0, 2000.0]
    subject = subject_from_arrays("s", arrays, patch=24)   # (24, 24, 8) padded to one whole patch
    clean_bvals, clean_bvecs = truth_scheme()
    at_2000 = np.flatnonzero((clean_bvals == 0) | (clean_bvals == 2000.0))   # a truth-scheme node: no interpolation
    direct = reference_tensor(p.noise_free[..., at_2000], clean_bvals[at_2000], clean_bvecs[at_2000], p.mask)
    np.testing.assert_allclose(subject.shell_reference[:, :, :8, 1], direct, rtol=1e-5, atol=1e-9)
    shell_set = PatchDataset([subject], 6, patch=24, seed=2, augment=False)
    per_shell = PatchDataset([subject], 6, patch=24, seed=2, augment=False, target="shell")
    seen = set()
    for index in range(6):
        rng = per_shell.rng(index)
        six = subject.pool[rng.integers(len(subject.pool))]
        k = [1000.0, 2000.0].index(six.shell)
        seen.add(k)
        a, s = shell_set[index], per_shell[index]
        assert torch.equal(a["pairs"], s["pairs"])             # the same input, another target
        expected = np.moveaxis(subject.shell_reference[..., k, :], -1, 0) * 1e3
        np.testing.assert_allclose(s["target"].numpy(), expected, rtol=1e-6)
        assert not torch.allclose(a["target"], s["target"])
    assert seen == {0, 1}
    subject.shell_reference = None
    with pytest.raises(ConfigError, match="per-shell"):
        PatchDataset([subject], 2, patch=24, target="shell")
