"""Integrators and the differentiable peak-blending direction rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from difftract.tracking.integrators import align, step
from difftract.tracking.peak_field import PeakField


def circle_field(points, prev_dirs):
    """Unit tangents of circles around the z axis through (0, 0): an exactly known flow."""
    t = torch.stack([-points[:, 1], points[:, 0], torch.zeros_like(points[:, 0])], dim=-1)
    t = t / torch.linalg.vector_norm(t, dim=-1, keepdim=True)
    return align(t, prev_dirs), torch.ones(len(points), dtype=torch.bool)


@pytest.mark.parametrize("method,order", [("euler", 1), ("rk2", 2), ("rk4", 3)])
def test_integrators_converge_at_their_order(method, order):
    """Radius drift after a quarter circle shrinks as h^order (RK4's normalised step: order 3)."""
    errors = []
    for h in (0.2, 0.1):
        p = torch.tensor([[10.0, 0.0, 0.0]], dtype=torch.float64)
        d = torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64)
        for _ in range(int(round((math.pi * 10 / 2) / h))):
            p, d, valid = step(circle_field, p, d, h, method)
            assert valid.all()
        errors.append(abs(torch.linalg.vector_norm(p[0, :2]).item() - 10.0))
    assert errors[1] < errors[0]
    assert math.log2(errors[0] / errors[1]) > order - 0.6


def test_directions_are_aligned_with_the_previous_step():
    flipped = lambda p, d: (-circle_field(p, d)[0], torch.ones(len(p), dtype=torch.bool))  # noqa: E731
    p = torch.tensor([[10.0, 0.0, 0.0]], dtype=torch.float64)
    d = torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64)
    new, direction, _ = step(flipped, p, d, 0.5, "rk4")
    assert direction[0, 1] > 0.99 and new[0, 1] > 0.49


def straight_peaks(shape=(6, 5, 4), direction=(1.0, 0.0, 0.0), npeaks=2):
    peaks = torch.zeros(*shape, npeaks, 3, dtype=torch.float64)
    peaks[..., 0, :] = torch.tensor(direction, dtype=torch.float64)
    if npeaks > 1:
        peaks[..., 1, :] = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    return peaks


def test_peak_field_follows_the_closest_peak_and_respects_the_cone():
    field = PeakField(straight_peaks(), max_angle=30)
    p = torch.tensor([[2.2, 2.0, 1.5], [2.2, 2.0, 1.5], [9.0, 0.0, 0.0]], dtype=torch.float64)
    prev = torch.tensor([[-1.0, 0.1, 0.0], [0.0, 0.1, 1.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    prev = prev / prev.norm(dim=1, keepdim=True)
    dirs, valid = field(p, prev)
    assert valid.tolist() == [True, True, False]                  # the last point is off the grid
    np.testing.assert_allclose(dirs[0].numpy(), [-1, 0, 0], atol=1e-12)  # flipped to agree
    np.testing.assert_allclose(dirs[1].numpy(), [0, 0, 1], atol=1e-12)
    sideways = torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64)
    assert not field(p[:1], sideways)[1].item()                  # no peak within 30 degrees


def test_gradcheck_through_euler_and_rk4_with_respect_to_the_field():
    rng = np.random.default_rng(0)
    base = straight_peaks(shape=(4, 4, 2), npeaks=1)
    noise = torch.as_tensor(rng.normal(scale=0.2, size=base.shape))
    peaks = (base + noise).requires_grad_(True)
    seeds = torch.tensor([[0.6, 1.6, 0.7], [1.1, 2.4, 0.2]], dtype=torch.float64)
    prev = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.1, 0.0]], dtype=torch.float64)

    for method in ("euler", "rk4"):
        def track(field_tensor):
            field = PeakField(field_tensor, max_angle=80)
            p, d = seeds, prev / prev.norm(dim=1, keepdim=True)
            points = []
            for _ in range(3):
                p, d, valid = step(field, p, d, 0.5, method)
                points.append(p)
            return torch.stack(points)

        assert torch.autograd.gradcheck(track, (peaks,), eps=1e-6, atol=1e-5)
        track(peaks).sum().backward()
        assert peaks.grad is not None and peaks.grad.abs().sum() > 0
        peaks.grad = None
