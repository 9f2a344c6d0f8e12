"""Shell selection and the direction counts an SH or CSD fit needs, with messages that say what would work."""

from __future__ import annotations

import numpy as np
import pytest
from dipy.core.gradients import gradient_table

from difftract.errors import ConfigError
from difftract.reconst.csd import CsdModel
from difftract.reconst.sh import SHModel, shell_groups

RESPONSE = (np.array([1.7e-3, 3e-4, 3e-4]), 1000.0)


def _sphere(n, seed=0):
    g = np.random.default_rng(seed).normal(size=(n, 3))
    return g / np.linalg.norm(g, axis=1, keepdims=True)


def _gtab(bvals, dirs):
    return gradient_table(np.r_[0.0, bvals], bvecs=np.vstack([[0, 0, 0], dirs]))


def test_enough_directions_run_super_resolution_included():
    gtab = _gtab(np.full(25, 2000.0), _sphere(25))
    CsdModel(gtab, RESPONSE, lmax=8)          # 25 directions, 45 coefficients: super-resolved, as in DIPY/MRtrix
    SHModel(gtab, lmax=6)


def test_too_few_directions_say_which_shell_would_do():
    bvals = np.r_[np.full(30, 1000.0), np.full(10, 3000.0)]
    gtab = _gtab(bvals, np.vstack([_sphere(30, 1), _sphere(10, 2)]))
    with pytest.raises(ConfigError) as info:
        CsdModel(gtab, RESPONSE, lmax=8)      # default: the highest shell, 10 directions
    message = str(info.value)
    for words in ("CSD at lmax 8 needs one shell with at least 23 distinct directions", "the highest shell (the default), "
                  "b=3000, has 10", "b=1000: 30, b=3000: 10", "--shell 1000"):
        assert words in message, message
    assert CsdModel(gtab, RESPONSE, lmax=8, shell=1000).shell == 1000


def test_too_few_everywhere_suggests_a_lower_order_or_says_nothing_fits():
    gtab = _gtab(np.full(16, 1000.0), _sphere(16))
    with pytest.raises(ConfigError, match=r"a lower order would do: --lmax 6 \(16 directions\)"):
        CsdModel(gtab, RESPONSE, lmax=8)
    gtab = _gtab(np.full(5, 1000.0), _sphere(5))
    with pytest.raises(ConfigError, match="no shell has enough directions for any order"):
        SHModel(gtab, lmax=4)


def test_repeated_directions_count_once():
    dirs = _sphere(12)
    gtab = _gtab(np.full(36, 1000.0), np.vstack([dirs, -dirs, dirs]))     # 36 volumes, 12 directions
    with pytest.raises(ConfigError, match="b=1000, has 12"):
        CsdModel(gtab, RESPONSE, lmax=6)


def test_coplanar_shell_cannot_give_the_response():
    angles = np.linspace(0, np.pi, 16, endpoint=False)
    flat = np.stack([np.cos(angles), np.sin(angles), np.zeros(16)], axis=1)
    gtab = _gtab(np.full(16, 1000.0), flat)
    with pytest.raises(ConfigError, match="cannot determine a tensor.*--response L1,L2,L3,S0"):
        CsdModel(gtab, None, lmax=4)
    CsdModel(gtab, RESPONSE, lmax=4)            # a given response needs no tensor


def test_scattered_shell_is_fitted_whole():
    bvals = 1000.0 + np.random.default_rng(3).uniform(-45, 45, size=30)
    gtab = _gtab(bvals, _sphere(30))
    assert len(shell_groups(gtab.bvals)) == 1
    model = SHModel(gtab, lmax=6, shell=1000)
    assert len(model.dw_index) == 30
