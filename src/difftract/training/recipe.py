"""How a simulated training subject is made from its seed: a phantom recipe and a model's preparation.

A :class:`SubjectRecipe` holds a :class:`~difftract.phantom.PhantomConfig` template (its seed
is replaced per subject) and the model's ``prepare(phantom, **settings)``, which turns the
phantom into the arrays training reads (e.g. the DWI and its reference tensor). A subject
is thus a pure function of its seed: regenerated after eviction from the pool, or on
another machine, it is the same. Whatever the template holds (preset, randomised tissue
or acquisition, scheme) passes through unchanged, so new presets need no code here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass, replace

import numpy as np
import torch
from dipy.core.gradients import gradient_table

from .. import __version__
from ..errors import ConfigError
from ..io.dwi import DWI
from ..io.gradients import B0_THRESHOLD
from ..phantom import Phantom, PhantomConfig, simulate
from ..phantom.presets import PRESETS

Prepare = Callable[..., dict[str, np.ndarray]]


@dataclass(frozen=True)
class SubjectRecipe:
    """A phantom template and the preparation that makes a training subject of a seed.

    Parameters
    ----------
    phantom : PhantomConfig
        Every setting of the phantoms but the seed.
    prepare : callable
        ``prepare(phantom, **settings) -> dict of arrays``; a module-level function, so that
        the background worker (another process) can receive it.
    settings : dict
        JSON-like keyword arguments of ``prepare``.
    presets : tuple of str
        Presets the subjects alternate between (subject ``seed`` takes ``presets[seed mod n]``,
        e.g. ``("random", "brain-random")``); empty: the template's preset.
    """

    phantom: PhantomConfig
    prepare: Prepare
    settings: dict = field(default_factory=dict)
    presets: tuple[str, ...] = ()

    def config(self, seed: int) -> PhantomConfig:
        """The phantom configuration of subject ``seed``."""
        seed = int(seed)
        if self.presets:
            return replace(self.phantom, seed=seed, preset=self.presets[seed % len(self.presets)])
        return replace(self.phantom, seed=seed)

    def make(self, seed: int) -> dict[str, np.ndarray]:
        """Simulate subject ``seed`` and prepare it, on one CPU thread.

        One thread: float reductions that depend on the thread count would make the same
        seed give slightly different arrays on machines with different core counts.
        """
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self.prepare(simulate(self.config(seed)), **self.settings)
        finally:
            torch.set_num_threads(threads)

    def describe(self) -> dict:
        """JSON-like record: the phantom template (seed left out), the preparation and its settings."""
        # an unset noise-free twin is left out: recipes from before it existed keep their key
        config = {k: v for k, v in asdict(self.phantom).items()
                  if k != "seed" and not (k == "noise_free_scheme" and v is None)}
        config = json.loads(json.dumps(config, default=lambda o: np.asarray(o).tolist()))
        # the version too: a pool kept across an upgrade must not hand back the old code's subjects
        record = {"phantom": config, "prepare": f"{self.prepare.__module__}.{self.prepare.__qualname__}",
                  "settings": json.loads(json.dumps(self.settings)), "difftract_version": __version__}
        if self.presets:
            record["presets"] = list(self.presets)
            record["preset_rule"] = "subject seed s: presets[s mod len(presets)]"
        return record

    @property
    def key(self) -> str:
        """Short hash of :meth:`describe`: pool files of another recipe never pass for this one's."""
        return hashlib.sha256(json.dumps(self.describe(), sort_keys=True).encode()).hexdigest()[:12]


def phantom_recipe(preset: str, overrides: dict | None = None) -> PhantomConfig:
    """A phantom template: ``PhantomConfig(preset=preset, **overrides)``, checked field by field.

    JSON-like values are accepted: lists become tuples, and a dict for a field whose value
    is a dataclass (``tissue``, or ranges of randomised phantoms) builds that dataclass. A
    ``seed`` is refused (subjects get theirs from the stream).
    """
    if preset not in PRESETS:   # here, not when a worker first simulates a subject
        raise ConfigError(f"unknown phantom preset {preset!r}; choose {', '.join(PRESETS)}")
    overrides = dict(overrides or {})
    defaults = {f.name: f for f in fields(PhantomConfig) if f.name not in ("seed", "preset")}
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown phantom setting(s) {', '.join(unknown)}; the stream takes "
                          f"{', '.join(sorted(defaults))} (the seed comes from the stream)")
    for key, value in overrides.items():
        f = defaults[key]
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        if isinstance(value, dict) and is_dataclass(default):
            try:
                overrides[key] = type(default)(**{k: _tuples(v) for k, v in value.items()})
            except TypeError as e:
                raise ConfigError(f"phantom setting {key}: {e}") from None
        else:
            overrides[key] = _tuples(value)
    try:
        return PhantomConfig(preset=preset, **overrides)
    except TypeError as e:
        raise ConfigError(f"phantom settings: {e}") from None


def _tuples(value):
    """JSON lists as tuples (PhantomConfig's sequences), nested ones too."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def phantom_dwi(phantom: Phantom) -> DWI:
    """The phantom's scan as :func:`~difftract.io.dwi.load_subject` would read it from its folder."""
    gtab = gradient_table(phantom.bvals, bvecs=phantom.bvecs, b0_threshold=B0_THRESHOLD)
    return DWI(phantom.data, phantom.affine, gtab, phantom.mask)
