"""The 48 grid symmetries of a DDTracking sample are exact: the sample of the turned subject."""

from __future__ import annotations

import numpy as np
import torch

from difftract.models.ddtracking.augment import GridSymmetries, grid_symmetries, sh_matrix
from difftract.models.ddtracking.data import StreamlineDataset
from difftract.models.ddtracking.features import neighbourhood
from difftract.reconst.sh import sh_basis


def test_the_48_symmetries_are_distinct_signed_permutations():
    R = grid_symmetries()
    assert R.shape == (48, 3, 3) and np.array_equal(R[0], np.eye(3))
    assert len({r.tobytes() for r in R}) == 48
    assert np.allclose(np.einsum("gij,gkj->gik", R, R), np.eye(3))


def test_the_sh_matrix_turns_the_function_and_is_orthogonal():
    rng = np.random.default_rng(0)
    u = rng.standard_normal((50, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    c = rng.standard_normal(28)
    for R in grid_symmetries()[[1, 7, 13, 47]]:
        M = sh_matrix(R, 6)
        assert np.allclose(M @ M.T, np.eye(28), atol=1e-10)
        turned = sh_basis(u @ R.T, 6, False)[0] @ (M @ c)           # f'(R u)
        assert np.allclose(turned, sh_basis(u, 6, False)[0] @ c, atol=1e-10)   # = f(u)


def test_a_turned_sample_is_the_sample_of_the_turned_volume():
    rng = np.random.default_rng(1)
    N, sym = 9, GridSymmetries(28)
    volume = rng.standard_normal((N, N, N, 28))
    centre = (N - 1) / 2
    grid = np.indices((N, N, N)).reshape(3, -1).T
    points = rng.uniform(2, N - 3, (5, 3))
    prev, target = rng.standard_normal((2, 5, 3))
    for g in (3, 20, 41):
        R = sym.R[g]
        source = np.rint(centre + (grid - centre) @ R).astype(int)       # R^T (x - c) + c
        turned = (volume[tuple(source.T)] @ sh_matrix(R, 6).T).reshape(volume.shape)
        mapped = centre + (points - centre) @ R.T
        expected = neighbourhood(torch.as_tensor(turned), torch.as_tensor(mapped))
        got = sym.apply(g, neighbourhood(torch.as_tensor(volume), torch.as_tensor(points)),
                        torch.as_tensor(prev), torch.as_tensor(target))
        assert torch.allclose(got[0], expected, atol=1e-5)
        assert np.allclose(got[1].numpy(), prev @ R.T) and np.allclose(got[2].numpy(), target @ R.T)


def test_the_dataset_draws_symmetries_only_when_asked():
    from difftract.models.ddtracking.data import DDSubject

    rng = np.random.default_rng(2)
    line = np.cumsum(np.tile([[1.0, 0.0, 0.0]], (10, 1)), axis=0).astype(np.float32) + 2
    subject = DDSubject("s", torch.as_tensor(rng.standard_normal((16, 8, 8, 28)), dtype=torch.float32), [line])
    plain = StreamlineDataset([subject], 16, seed=0, jitter=0.0, seed_angle=0.0)
    turned = StreamlineDataset([subject], 16, seed=0, jitter=0.0, seed_angle=0.0, augment=True)
    axes = {tuple(np.abs(np.rint(turned[i]["target"][0].numpy())).astype(int)) for i in range(16)}
    assert all(tuple(np.abs(plain[i]["target"][0].numpy()).round().astype(int)) == (1, 0, 0) for i in range(16))
    assert len(axes) > 1            # the x-going streamline now also goes along y or z
