"""Build a foreign test phantom: difftract's geometry and ground truth, DIPY's signal and noise.

    python benchmarks/foreign/build.py OUT --layout crossroads --seed 9001
    python benchmarks/foreign/build.py OUT --layout random --seed 9002 --model sticks --snr 15
    python benchmarks/foreign/build.py OUT --layout fibercup --seed 9003 --ndirs 32 --bvals 1000 --snr 20

The directory is a phantom directory like ``difftract simulate`` writes (``difftract
fit/track/score`` read it), with ``dwi.json`` saying ``"test_data": true``: the training
commands refuse it. Seeds must be test seeds (9000 to 99,999,999), so no training subject shares one.
Same arguments, same bytes of signal (one seed drives geometry, fibre sampling, scheme,
eigenvalue drift and noise).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

if __package__ in (None, ""):          # run as a script: make ``foreign`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "foreign"            # noqa: A001 - lets the relative imports below resolve

from difftract.errors import ConfigError, DifftractError
from difftract.phantom import Phantom, PhantomConfig, save_phantom, simulate
from difftract.phantom.signal import bias_field
from difftract.phantom.splits import TEST_SEED_START, is_test_seed

from .layouts import LAYOUTS, crossroads
from .dipy_signal import MODELS, ForeignTissue, VoxelCompartments, add_dipy_noise, compartments, foreign_signal

FOREIGN_STREAM = 0xF0E1   # separates this module's random streams from simulate's for the same seed


@dataclass
class ForeignConfig:
    """A foreign test phantom: layout, seed, DIPY signal model, scheme and SNR."""

    layout: str = "crossroads"
    seed: int = TEST_SEED_START + 1
    model: str = "tensor"
    snr: float | None = 20.0
    bvals: tuple[float, ...] = (1000.0,)
    ndirs: int | tuple[int, ...] = 32
    nb0: int = 2
    streamlines_per_bundle: int | None = None
    n_bundles: int = 6                       # random layout
    tissue: ForeignTissue = field(default_factory=ForeignTissue)

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ConfigError(f"unknown foreign layout {self.layout!r}; choose {', '.join(LAYOUTS)}")
        if self.model not in MODELS:
            raise ConfigError(f"unknown foreign signal model {self.model!r}; choose {' or '.join(MODELS)}")
        if not is_test_seed(self.seed):
            raise ConfigError(f"foreign phantoms are test data: seed {self.seed} must be a test seed "
                              f"(>= {TEST_SEED_START})")


@dataclass
class ForeignPhantom:
    """The noisy phantom (written to disk), its noise-free signal and the compartments behind it."""

    phantom: Phantom
    clean: np.ndarray
    compartments: VoxelCompartments


def build_foreign(config: ForeignConfig) -> ForeignPhantom:
    """Geometry and ground truth from :func:`difftract.phantom.simulate`, signal from DIPY."""
    pc = PhantomConfig(preset=config.layout, seed=config.seed, snr=None, bvals=tuple(config.bvals),
                       ndirs=config.ndirs, nb0=config.nb0, streamlines_per_bundle=config.streamlines_per_bundle,
                       n_bundles=config.n_bundles)
    layout = None
    if config.layout == "crossroads":
        layout = crossroads(**({} if config.streamlines_per_bundle is None
                               else {"streamlines_per_bundle": config.streamlines_per_bundle}))
    ours = simulate(pc, layout=layout, signal=False)   # geometry and ground truth only: the signal is DIPY's
    drift_rng, noise_rng = (np.random.default_rng(s)
                            for s in np.random.SeedSequence([config.seed, FOREIGN_STREAM]).spawn(2))
    drift = 0.5 * bias_field(ours.shape, 1.0, drift_rng)    # smooth, in [0, 1]: eigenvalues drift along bundles
    csf = None if layout is None or layout.isotropic is None else layout.isotropic["csf"]
    comp = compartments(ours.fractions, ours.peaks, ours.mask, csf, config.tissue, drift)
    clean = foreign_signal(ours.bvals, ours.bvecs, comp, config.tissue, config.model).reshape(*ours.shape, -1)
    noisy = add_dipy_noise(clean, config.snr, config.tissue.s0_wm, noise_rng)
    phantom = replace(ours, config=replace(pc, snr=config.snr), data=noisy.astype(np.float32))
    return ForeignPhantom(phantom, clean.astype(np.float32), comp)


def provenance_params(config: ForeignConfig) -> dict:
    """What the phantom's sidecars record: the config and where each part comes from."""
    import dipy

    signal = {"tensor": "multi_tensor", "sticks": "sticks_and_ball"}[config.model]
    return {**asdict(config), "geometry": "difftract.phantom.simulate (voxelizer, ground truth)",
            "signal": f"dipy.sims.voxel.{signal} (DIPY {dipy.__version__})",
            "noise": "dipy.sims.voxel.add_noise, rician, sigma = s0_wm / snr"}


def save_foreign(foreign: ForeignPhantom, config: ForeignConfig, out: str | Path, force: bool = False) -> Path:
    """Write the phantom directory, marked as test data."""
    return save_phantom(foreign.phantom, out, force=force, command="benchmarks/foreign/build.py",
                        params=provenance_params(config),
                        extra={"test_data": True, "foreign_signal": "dipy.sims.voxel"})


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(","))


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path, help="phantom directory to write")
    ap.add_argument("--layout", choices=LAYOUTS, default="crossroads")
    ap.add_argument("--seed", type=int, default=TEST_SEED_START + 1, help="a test seed, >= %d" % TEST_SEED_START)
    ap.add_argument("--model", choices=MODELS, default="tensor", help="DIPY signal model (default: %(default)s)")
    ap.add_argument("--snr", default="20", help="b0 SNR of white matter, or 'none' (default: %(default)s)")
    ap.add_argument("--bvals", type=_floats, default=(1000.0,), help="shells, comma-separated (default: 1000)")
    ap.add_argument("--ndirs", type=_ints, default=(32,), help="directions per shell (default: 32)")
    ap.add_argument("--nb0", type=int, default=2)
    ap.add_argument("--streamlines-per-bundle", type=int)
    ap.add_argument("--force", action="store_true", help="overwrite OUT")
    args = ap.parse_args(argv)
    try:
        snr = None if args.snr.lower() == "none" else float(args.snr)
        config = ForeignConfig(layout=args.layout, seed=args.seed, model=args.model, snr=snr, bvals=args.bvals,
                               ndirs=args.ndirs, nb0=args.nb0, streamlines_per_bundle=args.streamlines_per_bundle)
        foreign = build_foreign(config)
        save_foreign(foreign, config, args.out, force=args.force)
    except (DifftractError, ValueError) as e:
        print(f"build.py: error: {e}", file=sys.stderr)
        return 2
    s = foreign.phantom.summary()
    print(f"{args.out}: {args.layout} seed {args.seed}, DIPY {args.model}, SNR {snr}; {s['shape']}, "
          f"{s['volumes']} volumes, {s['wm_voxels']} WM voxels, {s['crossing_voxels']} crossing voxels, "
          f"{s['streamlines']} streamlines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
