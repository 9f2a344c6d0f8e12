"""DDTracking's 3x3x3 SH neighbourhood features."""

from __future__ import annotations

import torch

from difftract.models.ddtracking.features import OFFSETS, neighbourhood
from difftract.tracking.interpolate import trilinear


def test_offsets_cover_the_cube_with_the_centre_in_the_middle():
    assert OFFSETS.shape == (27, 3) and torch.equal(OFFSETS[13], torch.zeros(3))
    assert torch.equal(OFFSETS[0], -torch.ones(3)) and torch.equal(OFFSETS[26], torch.ones(3))


def test_neighbourhood_samples_each_offset_where_it_belongs():
    g = torch.Generator().manual_seed(0)
    sh = torch.randn(7, 8, 9, 28, generator=g, dtype=torch.float64)
    points = torch.tensor([[3.0, 4.0, 4.0], [2.3, 5.7, 1.2]], dtype=torch.float64)
    feats = neighbourhood(sh, points)
    assert feats.shape == (2, 28, 3, 3, 3)
    # a point at a voxel centre reads the voxels themselves: weights exactly 1 and 0, an exact copy
    assert torch.equal(feats[0, :, 0, 2, 1], sh[2, 5, 4])
    assert torch.equal(feats[0, :, 1, 1, 1], sh[3, 4, 4])
    # a continuous point reads trilinear values at its shifted positions: the same interpolation done
    # one axis at a time, with the weights from p rather than p + o, so rounding of the last few bits
    # of max|sh| (~4) at most: 16 eps * max|sh| (vs the default 1e-7); a wrong offset or corner moves
    # the value by O(1)
    expected, _ = trilinear(sh, (points[1] + torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64))[None])
    torch.testing.assert_close(feats[1, :, 2, 0, 1], expected[0], rtol=0,
                               atol=16 * torch.finfo(torch.float64).eps * float(sh.abs().max()))


def test_off_grid_offsets_read_zero_and_gradients_reach_volume_and_points():
    sh = torch.rand(4, 4, 4, 6, dtype=torch.float64, requires_grad=True)
    points = torch.tensor([[0.2, 1.5, 3.0]], dtype=torch.float64, requires_grad=True)
    feats = neighbourhood(sh, points)
    assert torch.all(feats[0, :, :, :, 2] == 0)          # z + 1 = 4 > 3.5: off the grid
    assert torch.all(feats[0, :, 0, :, :] == 0)          # x - 1 = -0.8 < -0.5: off the grid
    feats.sum().backward()
    assert sh.grad.abs().sum() > 0 and points.grad.abs().sum() > 0
