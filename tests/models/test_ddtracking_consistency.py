"""The equivariance penalty of DDTracking's training (models/ddtracking/consistency.py)."""

from __future__ import annotations

import pytest
import torch

from difftract.errors import ConfigError
from difftract.models.ddtracking.augment import grid_symmetries_for
from difftract.models.ddtracking.consistency import consistent_loss, random_symmetry
from difftract.models.ddtracking.data import DDTrackingTask
from difftract.models.ddtracking.model import DDTracking, DDTrackingConfig

from .test_ddtracking_model import TINY


def batch(n_points=(5, 7), m: int = 28, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    P = sum(n_points)
    unit = lambda x: x / x.norm(dim=-1, keepdim=True)   # noqa: E731
    return {"patches": torch.randn(P, m, 3, 3, 3, generator=g, dtype=torch.float64),
            "prev": unit(torch.randn(P, 3, generator=g, dtype=torch.float64)),
            "target": unit(torch.randn(P, 3, generator=g, dtype=torch.float64)),
            "lengths": torch.tensor(n_points)}


def draws(P: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (0.001 + 0.999 * torch.rand(P, 1, generator=g, dtype=torch.float64),
            torch.randn(P, 3, generator=g, dtype=torch.float64))


class Equivariant(torch.nn.Module):
    """h turns with the previous direction and y_k, scaled by an invariant of the neighbourhood (its l = 0
    coefficients summed over the 27 offsets): exactly equivariant, so the penalty must vanish."""

    def __init__(self, broken: bool = False):
        super().__init__()
        self.broken = broken

    def forward(self, patches, prev, lengths, y, k):
        scale = 1.0 + patches[:, 0].sum(dim=(-1, -2, -3)).tanh().unsqueeze(-1)
        h = -(prev + 0.5 * y) * scale
        if self.broken:   # reads one axis apart from the others: not equivariant
            h = h + prev[:, :1].abs()
        return {"h": h, "eps": y}


# 24 and 33 turn the axes in a 3-cycle: R^T differs from R, so a transpose would show
@pytest.mark.parametrize("g", [1, 7, 23, 24, 33, 47])
def test_an_equivariant_network_pays_nothing_and_a_broken_one_does(g):
    b = batch()
    k, eps = draws(len(b["target"]))
    loss, estimate, parts = consistent_loss(Equivariant(), b, k, eps, 1.0, 100.0, g)
    assert parts["equivariance"] < 1e-20 and parts["equivariance_deg"] < 1e-5
    # the diffusion loss is the mean over both halves, and both halves score the same here
    alone, _, _ = consistent_loss(Equivariant(), b, k, eps, 0.0, 100.0, g)
    assert float(loss) == pytest.approx(float(alone))
    _, _, broken = consistent_loss(Equivariant(broken=True), b, k, eps, 1.0, 100.0, g)
    assert broken["equivariance"] > 1e-3


def test_random_symmetry_never_draws_the_identity():
    g = torch.Generator().manual_seed(0)
    drawn = {random_symmetry(g, "cpu") for _ in range(2000)}
    assert drawn == set(range(1, 48))


def test_the_penalty_teaches_a_network_its_symmetry():
    """Steps on the penalty alone (a fixed symmetry, so the measure is the one trained) shrink the gap."""
    torch.manual_seed(0)
    model = DDTracking(DDTrackingConfig(variant="full", **TINY)).double()
    b = batch(seed=3)
    k, eps = draws(len(b["target"]))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def gap():
        with torch.no_grad():
            return consistent_loss(model, b, k, eps, 1.0, 100.0, 24)[2]["equivariance"]

    before = gap()
    for _ in range(40):
        opt.zero_grad()
        consistent_gap(model, b, k, eps).backward()
        opt.step()
    assert before > 0 and gap() < 0.2 * before


def consistent_gap(model, b, k, eps) -> torch.Tensor:
    """The penalty as a tensor: the weighted loss minus the loss at weight 0."""
    with_penalty, _, _ = consistent_loss(model, b, k, eps, 1.0, 100.0, 24)
    without, _, _ = consistent_loss(model, b, k, eps, 0.0, 100.0, 24)
    return with_penalty - without


def test_the_task_uses_the_penalty_only_when_weighted():
    model = DDTracking(DDTrackingConfig(variant="full", **TINY)).double()
    b = batch()
    g = torch.Generator().manual_seed(2)
    plain = DDTrackingTask().loss(model, b, g)
    # without the penalty the task draws what it drew before the option: k, then the noise
    expected = torch.Generator().manual_seed(2)
    torch.rand(12, 1, generator=expected, dtype=torch.float64)
    torch.randn(12, 3, generator=expected, dtype=torch.float64)
    assert torch.equal(g.get_state(), expected.get_state())
    again = DDTrackingTask(equivariance=0.0).loss(model, b, torch.Generator().manual_seed(2))
    assert float(plain[0].detach()) == float(again[0].detach()) and "equivariance" not in plain[1]
    weighted = DDTrackingTask(equivariance=2.0).loss(model, b, torch.Generator().manual_seed(2))
    assert weighted[1]["equivariance"] > 0 and weighted[1]["equivariance_deg"] > 0


def test_the_turned_half_is_the_turned_batch():
    """The second half's targets are the batch turned by the symmetry (GridSymmetries.apply)."""
    b = batch()
    seen = {}

    class Spy(Equivariant):
        def forward(self, patches, prev, lengths, y, k):
            seen.update(patches=patches, prev=prev, lengths=lengths, y=y)
            return super().forward(patches, prev, lengths, y, k)

    k, eps = draws(len(b["target"]))
    consistent_loss(Spy(), b, k, eps, 1.0, 100.0, 33)
    patches, prev, target = grid_symmetries_for(28).apply(33, b["patches"], b["prev"], b["target"])
    P = len(target)
    torch.testing.assert_close(seen["patches"][P:], patches)
    torch.testing.assert_close(seen["prev"][P:], prev)
    assert seen["lengths"].tolist() == [5, 7, 5, 7]
    # y_k of the turned half is the turned y_k of the first: the same k, the noise turned too
    Rt = grid_symmetries_for(28).Rt[33].double()
    assert not torch.equal(Rt, Rt.T)
    torch.testing.assert_close(seen["y"][P:], seen["y"][:P] @ Rt)


def test_the_options_refuse_a_penalty_for_a_regression_variant_without_augmentation_or_below_zero():
    from difftract.models.ddtracking.train import DDTrackingTrainOptions

    with pytest.raises(ConfigError, match="--equivariance"):
        DDTrackingTrainOptions(model=DDTrackingConfig(variant="spatial_temporal", **TINY), equivariance=1.0,
                               augment=True)
    with pytest.raises(ConfigError, match="--equivariance"):
        DDTrackingTrainOptions(equivariance=-1.0)
    with pytest.raises(ConfigError, match="needs --augment"):
        DDTrackingTrainOptions(equivariance=1.0)
    assert DDTrackingTrainOptions(equivariance=1.0, augment=True).equivariance == 1.0
