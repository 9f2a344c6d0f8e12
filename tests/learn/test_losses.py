"""Streamline losses and distance maps: values by hand, gradients by finite differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from difftract.errors import ConfigError

from difftract.learn import (DistanceMaps, Paths, References, StreamlineLoss, bundle_mask_loss, endpoint_loss,
                             point_loss, reference_halves, soft_overlap)


def _refs(points, length, bundle=None):
    S = len(points) // 2
    z = torch.zeros(S, 3, dtype=points.dtype)
    return References(z, z, points, torch.as_tensor(length), torch.zeros(S, dtype=torch.long),
                      torch.zeros(S, dtype=torch.long) if bundle is None else torch.as_tensor(bundle))


def _paths(points, length):
    return Paths(points, torch.as_tensor(length), torch.zeros(len(points), dtype=torch.long))


def test_point_loss_aligns_by_arc_length_and_charges_early_stops():
    ref = torch.zeros(2, 5, 3, dtype=torch.float64)
    ref[:, :, 0] = torch.arange(5.0)                 # 0, 1, 2, 3, 4 along x
    refs = _refs(ref, [5, 5])
    assert point_loss(_paths(ref.clone(), [5, 5]), refs, (1, 1, 1)) == 0
    shifted = ref.clone()
    shifted[:, 1:, 1] = 0.5                          # every point after the seed 0.5 voxel off
    assert torch.isclose(point_loss(_paths(shifted, [5, 5]), refs, (2, 2, 2)), torch.tensor(1.0, dtype=torch.float64))
    early = ref.clone()
    early[0, 2:] = early[0, 1]                       # half 0 stops after one step (frozen at x = 1)
    # half 0: distances 0 (x=1), 1, 2, 3 over the 4 points after the seed -> 1.5; half 1: 0
    assert torch.isclose(point_loss(_paths(early, [2, 5]), refs, (1, 1, 1)), torch.tensor(0.75, dtype=torch.float64))
    robust = point_loss(_paths(early, [2, 5]), refs, (1, 1, 1), robust_mm=1.0)
    assert robust < 0.75


def test_point_loss_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    ref = torch.as_tensor(rng.normal(size=(4, 6, 3)))
    pts = torch.as_tensor(rng.normal(size=(4, 6, 3)), dtype=torch.float64).requires_grad_(True)
    refs = _refs(ref, [6, 4, 3, 6])
    assert torch.autograd.gradcheck(lambda p: point_loss(_paths(p, [5, 6, 2, 6]), refs, (1.0, 2.0, 1.5)), (pts,))


def test_distance_maps_are_the_edt_and_charge_points_off_the_grid():
    region = np.zeros((6, 5, 4), bool)
    region[1:3, 1:3, 1:3] = True
    maps = DistanceMaps([region, np.zeros_like(region)], (1.0, 2.0, 1.5), dtype=torch.float64)
    edt = ndimage.distance_transform_edt(~region, sampling=(1.0, 2.0, 1.5))
    centres = torch.as_tensor(np.argwhere(np.ones_like(region)), dtype=torch.float64)
    assert np.allclose(maps.sample(centres)[:, 0].numpy(), edt.reshape(-1))
    assert torch.all(maps.sample(centres)[:, 1] > 10)           # an empty region is far from everything
    off = maps.sample(torch.tensor([[-2.5, 2.0, 2.0]], dtype=torch.float64))[0, 0]
    assert torch.isclose(off, torch.tensor(edt[0, 2, 2] + 2.0 - 1e-4, dtype=torch.float64), atol=1e-3)
    pts = torch.tensor([[3.3, 2.2, 0.7], [-1.0, 6.0, 1.1]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p: maps.sample(p)[:, 0], (pts,))


def _two_roi_maps(shape=(12, 6, 3)):
    head, tail = np.zeros(shape, bool), np.zeros(shape, bool)
    head[0:2], tail[-2:] = True, True
    return DistanceMaps([head, tail], (1, 1, 1), dtype=torch.float64)


def test_endpoint_loss_is_zero_in_the_rois_in_either_pairing_and_grows_outside():
    rois = _two_roi_maps()
    pts = torch.zeros(2, 3, 3, dtype=torch.float64)
    pts[0, :, 0] = torch.tensor([5.0, 8.0, 10.5])               # forward half ends in the tail
    pts[1, :, 0] = torch.tensor([5.0, 3.0, 0.5])                # backward half ends in the head
    paths = _paths(pts, [3, 3])
    assert endpoint_loss(paths, rois, torch.tensor([0]), tau_mm=None) == 0
    swapped = _paths(pts[[1, 0]], [3, 3])
    assert endpoint_loss(swapped, rois, torch.tensor([0]), tau_mm=None) == 0
    short = _paths(pts, [2, 3])                                 # the forward half stopped at x = 8
    assert torch.isclose(endpoint_loss(short, rois, torch.tensor([0]), tau_mm=None),
                         torch.tensor(1.0, dtype=torch.float64))   # (2 mm + 0) / 2 ends


def test_bundle_mask_loss_and_soft_overlap():
    mask = np.zeros((8, 8, 3), bool)
    mask[2:6, 2:6, :] = True
    outside = DistanceMaps([mask], (1, 1, 1), dtype=torch.float64)
    pts = torch.zeros(2, 4, 3, dtype=torch.float64)
    pts[..., 0] = torch.tensor([2.0, 3.0, 4.0, 5.0])
    pts[..., 1] = 3.0
    inside = _paths(pts.clone(), [4, 4])
    assert bundle_mask_loss(inside, outside, torch.tensor([0])) == 0
    pts[1, :, 1] = 7.0                                          # the backward half 2 voxels outside
    out = _paths(pts, [4, 4])
    assert torch.isclose(bundle_mask_loss(out, outside, torch.tensor([0])), torch.tensor(1.0, dtype=torch.float64))
    m = torch.as_tensor(mask)
    few = soft_overlap(inside.points.reshape(-1, 3), inside.valid.reshape(-1), m)
    grid = torch.as_tensor(np.argwhere(mask), dtype=torch.float64)
    full = soft_overlap(grid, torch.ones(len(grid), dtype=torch.bool), m)
    assert 0 < few < full and full > 0.6
    p = inside.points.reshape(-1, 3).clone().requires_grad_(True)
    soft_overlap(p, torch.ones(8, dtype=torch.bool), m).backward()
    assert p.grad.abs().sum() > 0


def test_streamline_loss_adds_its_weighted_terms():
    rois = _two_roi_maps()
    pts = torch.zeros(2, 3, 3, dtype=torch.float64)
    pts[0, :, 0] = torch.tensor([5.0, 6.0, 7.0])
    pts[1, :, 0] = torch.tensor([5.0, 4.0, 3.0])
    paths, refs = _paths(pts, [3, 3]), _refs(pts + 0.5, [3, 3])
    loss = StreamlineLoss((1, 1, 1), point_weight=2.0, endpoint_weight=0.5, rois=rois)
    total, parts = loss(paths, refs)
    expected = 2.0 * point_loss(paths, refs, (1, 1, 1)) + 0.5 * endpoint_loss(paths, rois, refs.bundle)
    assert torch.isclose(total, expected) and set(parts) == {"point_mm", "endpoint_mm"}
    with pytest.raises(ConfigError, match="rois"):
        StreamlineLoss((1, 1, 1), endpoint_weight=1.0)
    with pytest.raises(ConfigError, match="outside"):
        StreamlineLoss((1, 1, 1), mask_weight=1.0)


def test_reference_halves_are_arc_length_resampled_from_the_seed():
    line = np.stack([np.linspace(0, 20, 41), np.zeros(41), np.zeros(41)], 1)   # 20 voxels along x
    refs = reference_halves([line], 8, 6, step_mm=2.0, voxel_sizes=(2, 2, 2), rng=np.random.default_rng(0))
    assert refs.points.shape == (16, 7, 3)
    steps = np.diff(refs.points[:8, :, 0].numpy(), axis=1)
    valid = np.arange(6) < (refs.length[:8, None].numpy() - 1)
    assert np.allclose(steps[valid], 1.0, atol=1e-5)            # 2 mm = 1 voxel per step, forward along +x
    torch.testing.assert_close(refs.points[:8, 0], refs.seeds)
    torch.testing.assert_close(refs.points[8:, 0], refs.seeds)
    assert torch.all(refs.points[8:, 1, 0] < refs.seeds[:, 0])
    torch.testing.assert_close(refs.dirs, torch.tensor([[1.0, 0.0, 0.0]]).expand(8, 3))
    total = refs.length[:8] + refs.length[8:] - 1               # whole streamline within 2 steps of 11 points
    assert torch.all((total >= 10) & (total <= 13) | (refs.length[:8] == 7) | (refs.length[8:] == 7))
    with pytest.raises(Exception, match="no reference"):
        reference_halves([], 1, 1, step_mm=1.0, voxel_sizes=(1, 1, 1), rng=np.random.default_rng(0))
