"""The differentiable connectome: counts with hard ends, gradients against finite differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from difftract.errors import ConfigError
from difftract.learn import Parcellation, connectome, propagate_both, soft_assign, tensor_peaks
from difftract.tracking.getters import PeakGetter
from difftract.tracking.stopping import BinaryCriterion

from .conftest import tensor_along


def _labels():
    labels = np.zeros((12, 6, 3), np.int16)
    labels[0:2] = 1
    labels[5:7, 0:2] = 2
    labels[-2:] = 3
    return labels


def test_hard_ends_count_streamlines_symmetrically():
    parc = Parcellation(_labels(), (1, 1, 1), sigma_mm=0.2, background_mm=1.0, dtype=torch.float64)
    ends = torch.tensor([[[0.5, 3, 1], [10.5, 3, 1]],       # 1 - 3
                         [[10.5, 2, 1], [0.5, 1, 1]],       # 3 - 1
                         [[5.5, 0.5, 1], [0.5, 4, 1]],      # 2 - 1
                         [[10.6, 3, 1], [11, 3, 2]],        # 3 - 3
                         [[5.5, 4.5, 1], [0.5, 3, 1]]],     # nowhere - 1
                        dtype=torch.float64)
    C = parc.connectome(ends)
    expected = torch.tensor([[0, 1, 2], [1, 0, 0], [2, 0, 1]], dtype=torch.float64)
    torch.testing.assert_close(C, expected, atol=1e-4, rtol=0)
    weighted = parc.connectome(ends, torch.tensor([2.0, 1, 1, 1, 1], dtype=torch.float64))
    assert torch.isclose(weighted[0, 2], torch.tensor(3.0, dtype=torch.float64), atol=1e-4)
    everywhere = Parcellation(_labels(), (1, 1, 1), sigma_mm=0.2, background_mm=float("inf"), dtype=torch.float64)
    assert torch.isclose(everywhere.assign(ends[4, :1]).sum(), torch.tensor(1.0, dtype=torch.float64))


def test_connectome_gradient_matches_finite_differences():
    parc = Parcellation(_labels(), (1.0, 1.5, 2.0), sigma_mm=2.0, dtype=torch.float64)
    rng = np.random.default_rng(0)
    ends = torch.as_tensor(rng.uniform([0, 0, 0], [11, 5, 2], size=(6, 2, 3))).requires_grad_(True)
    weights = torch.as_tensor(rng.uniform(0.5, 1.5, size=6)).requires_grad_(True)
    probe = torch.as_tensor(rng.normal(size=(3, 3)))

    def f(e, w):
        return (parc.connectome(e, w) * probe).sum()

    assert torch.autograd.gradcheck(f, (ends, weights))


def test_connectome_gradient_through_the_propagator_matches_finite_differences():
    """d(connectome)/d(tensor field) through RK4 propagation, against central differences."""
    rng = np.random.default_rng(3)
    shape = (12, 6, 3)
    dirs = np.zeros(shape + (3,))
    dirs[..., 0] = 1.0
    dirs[..., 1] = rng.uniform(-0.4, 0.4, size=shape)
    dirs[..., 2] = rng.uniform(-0.2, 0.2, size=shape)   # off the voxel-centre planes, where trilinear has kinks
    lt0 = torch.as_tensor(tensor_along(dirs), dtype=torch.float64)
    mask = torch.ones(shape, dtype=torch.bool)
    stop = np.zeros(shape, bool)
    stop[2:10] = True                                      # some halves stop (and freeze) inside the 8 steps
    parc = Parcellation(_labels(), (1, 1, 1), sigma_mm=1.5, dtype=torch.float64)
    seeds = torch.tensor([[5.2, 2.6, 1.13], [5.7, 3.3, 0.87], [6.1, 4.2, 1.31]], dtype=torch.float64)
    start = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64).expand(3, 3)
    probe = torch.as_tensor(rng.normal(size=(3, 3)))
    seen = {}

    def f(lt):
        paths = propagate_both(PeakGetter(tensor_peaks(lt, mask), 60.0), seeds, start, 8, step_mm=0.5,
                               voxel_sizes=(1, 1, 1), integrator="rk4", criterion=BinaryCriterion(stop))
        seen["length"] = paths.length
        return (parc.connectome(paths.streamline_ends()) * probe).sum()

    lt = lt0.clone().requires_grad_(True)
    f(lt).backward()
    assert (seen["length"] < 9).sum() >= 2 and (seen["length"] == 9).sum() >= 2    # both frozen and running halves
    direction = torch.as_tensor(rng.normal(size=lt0.shape))
    eps = 1e-6
    numeric = (f(lt0 + eps * direction) - f(lt0 - eps * direction)) / (2 * eps)
    analytic = (lt.grad * direction).sum()
    assert analytic.abs() > 1e-4
    assert torch.isclose(analytic, numeric, rtol=1e-4, atol=1e-8)


def test_refuses_bad_parcellations():
    with pytest.raises(ConfigError, match="integer"):
        Parcellation(np.zeros((3, 3, 3)), (1, 1, 1))
    with pytest.raises(ConfigError, match="no labels"):
        Parcellation(np.zeros((3, 3, 3), int), (1, 1, 1))
    with pytest.raises(ConfigError, match="sigma"):
        Parcellation(_labels(), (1, 1, 1), sigma_mm=0)
    a = soft_assign(torch.tensor([[0.0, 5.0]]), 1.0, background_mm=math.inf)
    assert torch.isclose(a.sum(), torch.tensor(1.0)) and connectome(a, a).shape == (2, 2)
