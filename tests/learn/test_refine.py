"""Demonstration 1 in small: refining a noisy field lowers the point loss on held-out references."""

from __future__ import annotations

import numpy as np
import torch

from difftract.learn import point_loss, propagate_both, reference_halves, tensor_peaks
from difftract.learn.refine import RefineConfig, refine_tensor_field, track_tensor_field
from difftract.tracking.getters import PeakGetter
from difftract.tracking.stopping import BinaryCriterion
from difftract.tracking.tracker import TrackingParams


def _held_out_loss(lt, field, refs):
    with torch.no_grad():
        getter = PeakGetter(tensor_peaks(torch.as_tensor(lt), torch.as_tensor(field["mask"])), 60.0)
        paths = propagate_both(getter, refs.seeds, refs.dirs, 24, step_mm=0.5, voxel_sizes=(1, 1, 1),
                               integrator="euler", criterion=BinaryCriterion(field["mask"]))
        return float(point_loss(paths, refs, (1, 1, 1)))


def test_refinement_learns_the_references_direction(straight_field):
    lines = straight_field["lines"]
    train, held = lines[::2], lines[1::2]
    config = RefineConfig(iterations=25, seeds_per_iteration=32, n_steps=24, step_mm=0.5, integrator="euler",
                          lr=0.05, fidelity=0.01, smoothness=1.0, checkpoint_every=12)
    result = refine_tensor_field(straight_field["lt"].numpy(), straight_field["mask"], train, (1, 1, 1), config)
    losses = [r["point_mm"] for r in result.history]
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
    refs = reference_halves(held, 64, 24, step_mm=0.5, voxel_sizes=(1, 1, 1), rng=np.random.default_rng(9))
    before = _held_out_loss(straight_field["lt"], straight_field, refs)
    after = _held_out_loss(result.lt, straight_field, refs)
    assert after < 0.6 * before
    seeds = torch.tensor([[4.0, 4.0, 1.5], [9.0, 5.0, 1.5]])
    params = TrackingParams(step_mm=0.5, min_len_mm=0, max_len_mm=50, integrator="rk4")
    lines_after = track_tensor_field(result.lt, straight_field["mask"], seeds, (1, 1, 1), params)
    assert len(lines_after) == 2 and all(np.ptp(s[:, 0]) > 12 for s in lines_after)   # across the grid along x
