"""Volumes the tracker interpolates are stored C-contiguous, whatever order the caller's array had."""

from __future__ import annotations

import numpy as np
import torch

from difftract.tracking.sh_field import SHField
from difftract.tracking.stopping import BinaryCriterion, ThresholdCriterion


def test_fields_from_fortran_ordered_arrays_are_stored_contiguous():
    """nibabel gives Fortran-ordered arrays; flattening one at every step copied a whole-brain fODF each time."""
    rng = np.random.default_rng(0)
    coeffs = np.asfortranarray(rng.normal(size=(6, 5, 4, 15)).astype(np.float32))
    field = SHField(coeffs, legacy=False)
    assert not torch.as_tensor(coeffs).is_contiguous()              # what the field was given
    assert field.coeffs.is_contiguous() and field.to("cpu", torch.float64).coeffs.is_contiguous()
    fa = np.asfortranarray(rng.uniform(size=(6, 5, 4)))
    assert ThresholdCriterion(fa, 0.2).to("cpu", torch.float32).metric.is_contiguous()
    assert BinaryCriterion(fa > 0.5).to("cpu", torch.float32).mask.is_contiguous()
    points = torch.as_tensor(rng.uniform(0, 3, size=(50, 3)), dtype=torch.float32)
    same = SHField(np.ascontiguousarray(coeffs), legacy=False).to("cpu", torch.float32)
    assert torch.equal(field.to("cpu", torch.float32).pmf(points), same.pmf(points))
