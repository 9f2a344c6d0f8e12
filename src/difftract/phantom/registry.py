"""The phantom presets by name: which module builds each layout.

Apart from :mod:`.presets` (which the brain presets build on) so that no preset module
imports another that imports it back.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from .brain import brain
from .brain_random import brain_random_layout
from .presets import PRESETS, Layout, crossing, fibercup, fibercup_moved, random_layout


def get_layout(preset: str, rng: np.random.Generator, **kwargs) -> Layout:
    """Build the named preset's layout (extra keyword arguments go to the preset)."""
    if preset == "fibercup":
        return fibercup(**kwargs)
    if preset == "fibercup-moved":
        return fibercup_moved(rng, **kwargs)
    if preset == "crossing":
        return crossing(**kwargs)
    if preset == "random":
        return random_layout(rng, **kwargs)
    if preset == "brain":
        return brain(**kwargs)
    if preset == "brain-random":
        return brain_random_layout(rng, **kwargs)
    raise ConfigError(f"unknown phantom preset {preset!r}; choose {', '.join(PRESETS)}")
