"""DDTracking's directions averaged over a group of the grid's symmetries (test-time symmetrisation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from difftract.errors import ConfigError
from difftract.models.ddtracking.augment import GridSymmetries, grid_symmetries, sh_matrix
from difftract.models.ddtracking.features import samples
from difftract.models.ddtracking.getter import CPU_BLOCK_ROWS, MIN_PADDED_ROWS, DDTrackingGetter
from difftract.models.ddtracking.symmetrise import SUBGROUPS, Symmetries, check_symmetries

from .test_ddtracking_getter import forward_half, model, recorded_rows, replay

N = 11            # a cube, so that every symmetry maps the grid onto itself
CENTRE = (N - 1) / 2


@pytest.fixture(scope="module")
def volume():
    return np.random.default_rng(0).standard_normal((N, N, N, 28)).astype(np.float32)


def turned(volume: np.ndarray, R: np.ndarray) -> np.ndarray:
    """The volume turned by ``R`` about its centre: ``V'(x) = M V(R^T x)``."""
    grid = np.indices((N, N, N)).reshape(3, -1).T
    source = np.rint(CENTRE + (grid - CENTRE) @ R).astype(int)
    return (volume[tuple(source.T)] @ sh_matrix(R, 6).T).reshape(volume.shape).astype(volume.dtype)


def points_and_moves(n: int = 40, seed: int = 1):
    rng = np.random.default_rng(seed)
    points = torch.as_tensor(rng.uniform(2, N - 3, (n, 3)), dtype=torch.float32)
    prev = torch.nn.functional.normalize(torch.as_tensor(rng.normal(size=(n, 3)), dtype=torch.float32), dim=-1)
    return points, prev


def two_steps(getter: DDTrackingGetter, points: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """The directions of a second step from a fresh state (the first's directions as the move)."""
    state = getter.init(points, prev, torch.Generator().manual_seed(0))
    first, _, state = getter.directions(points, prev, state)
    second, _, _ = getter.directions(points + 0.5 * first, first, state)
    return second


def test_the_subgroups_are_groups_with_the_identity_first():
    R = grid_symmetries()
    for name, index in SUBGROUPS.items():
        assert index[0] == 0 and len(set(index)) == len(index)
        members = {tuple(R[i].ravel()) for i in index}
        assert {tuple((R[a] @ R[b]).ravel()) for a in index for b in index} == members, name
    assert [len(SUBGROUPS[n]) for n in ("none", "inversion", "swap", "perms", "flips", "all")] == [1, 2, 2, 6, 8, 48]
    with pytest.raises(ConfigError, match="unknown DDTracking symmetries 'mirror'"):
        check_symmetries("mirror")
    with pytest.raises(ConfigError):
        DDTrackingGetter(model(), np.zeros((N, N, N, 28), np.float32), symmetries="mirror")


def test_the_copies_are_the_augmentations_turned_samples(volume):
    """Copy ``k`` of a step reads what :meth:`GridSymmetries.apply` makes of the sample (the training's turn)."""
    sym, table = Symmetries("perms", 28), GridSymmetries(28)      # not all involutions: R and R^T differ
    points, prev = points_and_moves(7)
    x = samples(torch.as_tensor(volume), points)
    copies = sym.samples(x).unflatten(0, (7, len(sym)))
    moves = sym.vectors(prev).unflatten(0, (7, len(sym)))
    for k, g in enumerate(SUBGROUPS["perms"]):
        patches, turned_prev, _ = table.apply(g, x.permute(0, 4, 1, 2, 3), prev, prev)
        torch.testing.assert_close(copies[:, k], patches.permute(0, 2, 3, 4, 1), atol=1e-5, rtol=0)
        torch.testing.assert_close(moves[:, k], turned_prev)
    torch.testing.assert_close(sym.mean(sym.vectors(prev)), prev)       # R^T R d = d for every copy


@pytest.mark.parametrize("name", ["inversion", "swap", "perms", "flips"])
def test_symmetrised_directions_turn_with_the_scan(volume, name):
    """Exactly equivariant to the group: the scan turned by any member turns the directions, through the GRU's
    state (second step). The network alone is not (a random one here; the shipped ones by 5-6 degrees).

    In float64: the random network's large weights amplify float32's rounding of the turned inputs (the
    interpolation weights ``1 - w`` on flipped axes, the copies summed in another order) to about 1e-4."""
    m, scan = model().double(), torch.as_tensor(volume, dtype=torch.float64)
    points, prev = (t.double() for t in points_and_moves())
    alone, symmetric = (two_steps(DDTrackingGetter(m, scan, max_angle=90, symmetries=s), points, prev)
                        for s in ("none", name))
    gaps = []
    for g in SUBGROUPS[name][1:]:
        R = torch.as_tensor(grid_symmetries()[g])
        moved, turned_prev = CENTRE + (points - CENTRE) @ R.T, prev @ R.T
        other = torch.as_tensor(turned(volume.astype(np.float64), R.numpy()))
        got = two_steps(DDTrackingGetter(m, other, max_angle=90, symmetries=name), moved, turned_prev)
        torch.testing.assert_close(got, symmetric @ R.T, atol=1e-9, rtol=0)
        plain = two_steps(DDTrackingGetter(m, other, max_angle=90), moved, turned_prev)
        gaps.append(float((plain - alone @ R.T).abs().max()))
    assert max(gaps) > 0.05


def test_symmetrised_steps_in_blocks_and_the_backward_replay(volume):
    """Blocks count streamlines (CPU_BLOCK_ROWS // copies of them: the rows the network takes); the replay
    from the forward log equals the replay that encodes again; the state holds one GRU state per copy."""
    g = DDTrackingGetter(model().double(), torch.as_tensor(volume, dtype=torch.float64), max_angle=90,
                         symmetries="perms")                     # float64: as above, rounding is amplified
    assert g.copies == 6 and g.block_rows == CPU_BLOCK_ROWS // 6
    points, prev = (t.double() for t in points_and_moves())
    whole = two_steps(g, points, prev)
    g.block_rows = 7
    torch.testing.assert_close(two_steps(g, points, prev), whole, atol=1e-9, rtol=0)
    seeds, count, fwd = (t.double() if t.is_floating_point() else t for t in forward_half(1))
    seeds, fwd = seeds - 3, (fwd - 3) * (fwd != 0)
    logged, entries = replay(g, seeds, count, fwd, logged=True)
    assert logged.shape == (len(seeds), 6, *g.network.initial(1).shape[1:])
    assert entries[0].shape == (len(seeds), 6, g.network.config.z_dim)
    torch.testing.assert_close(logged, replay(g, seeds, count, fwd, logged=False)[0], atol=1e-9, rtol=0)
    plain = DDTrackingGetter(g.network.source, g.sh, max_angle=90)     # the identity copy replays as the network alone
    torch.testing.assert_close(logged[:, 0], replay(plain, seeds, count, fwd, logged=False)[0], atol=1e-9, rtol=0)


def test_stochastic_copies_read_the_noise_turned(volume, monkeypatch):
    """Copy ``R`` reads ``R e``: the scan turned by ``Q`` with the noise ``Q e`` turns the step (equivariance in
    distribution, since ``e`` is isotropic); with the noise left as it is, it does not."""
    import difftract.models.ddtracking.getter as getter_module

    m, scan = model().double(), torch.as_tensor(volume, dtype=torch.float64)
    points, prev = (t.double() for t in points_and_moves())
    e = torch.as_tensor(np.random.default_rng(5).normal(size=(len(points), 2, 3)))
    noise = {"e": e}
    monkeypatch.setattr(getter_module, "sampler_noise", lambda *a, **k: noise["e"])

    def step(volume_, points_, prev_):
        g = DDTrackingGetter(m, volume_, max_angle=90, steps=2, stochastic=True, symmetries="perms")
        return g.directions(points_, prev_, g.init(points_, prev_, torch.Generator()))[0]

    base = step(scan, points, prev)
    g = SUBGROUPS["perms"][3]                                   # a 3-cycle of the axes
    Q = torch.as_tensor(grid_symmetries()[g])
    other = torch.as_tensor(turned(volume.astype(np.float64), Q.numpy()))
    moved = CENTRE + (points - CENTRE) @ Q.T
    noise["e"] = e @ Q.T
    torch.testing.assert_close(step(other, moved, prev @ Q.T), base @ Q.T, atol=1e-9, rtol=0)
    noise["e"] = e
    assert float((step(other, moved, prev @ Q.T) - base @ Q.T).abs().max()) > 1e-3


def test_stochastic_symmetrised_steps_repeat_and_memory_counts_the_copies(volume):
    m = model()
    points, prev = points_and_moves()
    g = DDTrackingGetter(m, volume, max_angle=90, steps=3, stochastic=True, symmetries="swap")
    a, b = two_steps(g, points, prev), two_steps(g, points, prev)
    assert torch.equal(a, b) and torch.allclose(a.norm(dim=-1), torch.ones(len(a)))
    alone = DDTrackingGetter(m, volume, steps=3)
    assert g.bytes_per_point(4) == 2 * alone.bytes_per_point(4)
    assert g.bytes_per_seed(4) == 2 * alone.bytes_per_seed(4)


def test_padded_blocks_count_network_rows(volume):
    """With bfloat16 products on a CPU a block is padded so that the network sees at least MIN_PADDED_ROWS rows:
    MIN_PADDED_ROWS // copies streamlines, not MIN_PADDED_ROWS of them (8x the rows with 8 copies)."""
    g = DDTrackingGetter(model(), volume, max_angle=90, symmetries="flips", matmul_dtype=torch.bfloat16)
    assert g.network.pads_rows
    calls = recorded_rows(g)
    points, prev = points_and_moves(5)
    dirs = two_steps(g, points, prev)
    assert calls == [MIN_PADDED_ROWS // 8] * 2 and dirs.shape == (5, 3) and bool(torch.isfinite(dirs).all())
