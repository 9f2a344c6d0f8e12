"""CSD's active-set iteration: the Woodbury solves give the fresh factorisations' answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dipy.core.gradients import gradient_table

from difftract.reconst.active_set import Factors, iterate
from difftract.reconst.csd import LOW_ORDER, CsdModel

RESPONSE = (np.array([0.0017, 0.0003, 0.0003]), 1000.0)


def problem(rng, V=40, C=15, S=60, n=30):
    """A random well-posed CSD-like system: z, P, B_reg."""
    X = rng.normal(size=(n, C))
    B = rng.normal(size=(S, C))
    z = rng.normal(size=(V, n)) @ X
    return (torch.as_tensor(a) for a in (z, X.T @ X, B))


def test_woodbury_update_solves_the_changed_system():
    """A set differing from the base in r rows (added and removed): the same f as factoring it anew."""
    rng = np.random.default_rng(0)
    z, P, B = problem(rng)
    V, S = z.shape[0], B.shape[0]
    base = torch.as_tensor(rng.random((V, S)) < 0.4)
    factors = Factors(z, P, B)
    vox = torch.arange(V)
    factors.factor(vox, base)
    for rank in (1, 3, 8):
        changed = torch.zeros((V, S), dtype=torch.bool)
        for v in range(V):
            changed[v, rng.choice(S, size=rng.integers(0, rank + 1), replace=False)] = True
        f, singular = factors.update(vox, changed, rank)
        sets = base ^ changed
        Q = P + torch.einsum("vs,sc,sd->vcd", sets.double(), B, B)
        expected = torch.linalg.solve(Q, z.unsqueeze(-1)).squeeze(-1)
        assert not singular.any()
        assert torch.allclose(f, expected, rtol=0, atol=1e-10 * expected.abs().max())


@pytest.fixture(scope="module")
def slow_voxels(fibercup):
    """Fibercup voxels (32 directions, lmax 8: X^T X singular) and their first CSD estimate."""
    gtab = gradient_table(fibercup.bvals, bvecs=fibercup.bvecs)
    model = CsdModel(gtab, RESPONSE, lmax=8, legacy=True)
    mats = model.matrices(RESPONSE)
    mask = np.zeros_like(fibercup.mask)
    mask[tuple(np.argwhere(fibercup.mask)[::20].T)] = True
    z = torch.as_tensor(fibercup.data[mask][:, model.dw_index].astype(np.float64)) @ torch.as_tensor(mats.X)
    P, B = torch.as_tensor(mats.P), torch.as_tensor(mats.B_reg)
    f = torch.linalg.solve(P, z.T).T
    threshold = 0.1 * B[0, 0] * f[:, :1]
    small = f[:, :LOW_ORDER] @ B[:, :LOW_ORDER].T < threshold
    return z, P, B, f, threshold, small


def test_few_factorisations_follow_the_same_iterations(slow_voxels):
    """Woodbury on the kept factors (any rank limit) against a factorisation at every iteration
    (``max_rank=0``): same sets, iteration counts and fODF, also on voxels iterating long."""
    z, P, B, f, threshold, small = slow_voxels
    every_time = iterate(z, P, B, f, threshold, small, convergence=50, max_rank=0)
    assert int(every_time["iterations"].max()) >= 6                 # some voxels need many iterations
    for max_rank in (4, 12, 45):
        out = iterate(z, P, B, f, threshold, small, convergence=50, max_rank=max_rank)
        assert torch.equal(out["iterations"], every_time["iterations"])
        assert torch.equal(out["converged"], every_time["converged"])
        err = (out["coeffs"] - every_time["coeffs"]).norm(dim=1) / every_time["coeffs"].norm(dim=1)
        assert err.max() < 1e-10, err.max()


def test_unconverged_voxels_keep_their_last_iterate(slow_voxels):
    z, P, B, f, threshold, small = slow_voxels
    short = iterate(z, P, B, f, threshold, small, convergence=2)
    reference = iterate(z, P, B, f, threshold, small, convergence=2, max_rank=0)
    assert (~short["converged"]).sum() > 0
    assert torch.equal(short["converged"], reference["converged"])
    err = (short["coeffs"] - reference["coeffs"]).norm(dim=1) / reference["coeffs"].norm(dim=1)
    assert err.max() < 1e-10, err.max()


def test_a_failed_factorisation_keeps_the_last_iterate():
    """Q not positive definite even with MU added: the voxel stops, flagged, with its first estimate."""
    rng = np.random.default_rng(1)
    z, P, B = problem(rng, V=6)
    P = P.clone()
    P[0, 0] = -1e3                                                   # no Cholesky for any set
    f = torch.as_tensor(rng.normal(size=(6, P.shape[0])))
    small = torch.zeros((6, B.shape[0]), dtype=torch.bool)
    small[:4, :5] = True                                             # four voxels constrained, two not
    out = iterate(z, P, B, f, torch.zeros((6, 1), dtype=torch.float64), small, convergence=5)
    assert out["cholesky_failed"].tolist() == [True] * 4 + [False] * 2
    assert not out["converged"][:4].any() and out["converged"][4:].all()
    assert torch.equal(out["coeffs"], f) and (out["iterations"] == 0).all()
