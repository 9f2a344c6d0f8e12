"""Fixtures for the reconstruction tests: a noisy phantom with 64 directions, in float64."""

from __future__ import annotations

import numpy as np
import pytest
from dipy.core.gradients import gradient_table

from difftract.phantom import PhantomConfig, simulate


@pytest.fixture(scope="session")
def noisy64():
    """Fibercup at SNR 20 with 64 directions and 3 b0s; data as float64 (what DIPY is given)."""
    p = simulate(PhantomConfig(preset="fibercup", seed=1, ndirs=64, nb0=3, streamlines_per_bundle=20))
    return {"data": p.data.astype(np.float64), "mask": p.mask, "gtab": gradient_table(p.bvals, bvecs=p.bvecs),
            "phantom": p}
