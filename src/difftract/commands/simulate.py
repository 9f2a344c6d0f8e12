"""``difftract simulate``: a ground-truth phantom (DWI, masks, bundles, ROIs, streamlines) into a folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from ..phantom.presets import PRESETS

EPILOG = """\
outputs (in OUT):
  dwi.nii.gz dwi.bval dwi.bvec   the simulated scan (FSL gradient convention)
  mask.nii.gz wm.nii.gz          brain (tissue) mask and white-matter (all bundles) mask
  gt/bundles/NAME.trk            ground-truth streamlines per bundle
  gt/masks/NAME.nii.gz           ground-truth bundle masks
  gt/rois/NAME_{head,tail}.nii.gz  endpoint regions
  gt/scoring.json                Tractometer configuration (scilpy's keys)
  gt/fractions.nii.gz gt/peaks.nii.gz  per-voxel fibre fractions and directions
  tractogram.trk                 all ground-truth streamlines (bundle index per streamline)
  dwi.json tractogram.json       provenance sidecars; qc_phantom.png a QC picture

examples:
  difftract simulate phantom --preset fibercup --seed 0
  difftract simulate xing --preset crossing --angles 60 --snr 30 --bvals 1000,2000 --ndirs 30,60
  difftract simulate train01 --preset random --n-bundles 8 --seed 1
  difftract simulate train02 --preset random --randomize --seed 2   (tissue and acquisition drawn too)
  difftract simulate brain --preset brain --voxel-size 2   (whole brain, MNI152 grid; ~1 min)
  difftract simulate subj07 --preset brain-random --seed 7 --voxel-size 2.5
"""


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_parser(sub) -> None:
    sim = sub.add_parser(
        "simulate", help="simulate a ground-truth phantom (DWI, masks, bundles, ROIs, streamlines)",
        description="Simulate a diffusion phantom with known fibres: each bundle is a tube around a smooth "
                    "centreline; the signal mixes stick + zeppelin fibre populations (partial volume at tube "
                    "borders, sharing in crossings) with isotropic background tissue, a smooth S0 field and "
                    "Rician noise. The same --seed gives identical arrays. --randomize draws the tissue (per bundle "
                    "and voxel) and the acquisition (shells, directions, b0s, SNR, coils, bias, voxel size) from the "
                    "seed too, and records the draw in dwi.json (see docs/phantoms.md).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sim.add_argument("out", type=Path, metavar="OUT", help="output directory (must not exist unless --force)")
    sim.add_argument("--preset", choices=PRESETS,
                     default="fibercup",
                     help="geometry: FiberCup-like slab (fibercup-moved: its bundles moved by the seed), 2-3 "
                          "straight crossing bundles, random 3D bundles, 32 named bundles of a whole brain on the "
                          "MNI152 template, or random bundles between grey-matter regions through the MNI152 white matter, new for every seed "
                          "(default: %(default)s)")
    sim.add_argument("--snr", type=float, default=None,
                     help="b0 SNR in fibre tissue (Rician noise); 0 for no noise (default: 20; drawn with --randomize)")
    sim.add_argument("--bvals", type=_floats, default=None, metavar="B[,B...]",
                     help="shell b-values in s/mm^2 (default: 1000)")
    sim.add_argument("--ndirs", type=_ints, default=None, metavar="N[,N...]",
                     help="directions per shell, one number for all shells or one per shell (default: 32)")
    sim.add_argument("--nb0", type=int, default=None, help="number of b0 volumes (default: 2)")
    sim.add_argument("--randomize", action="store_true",
                     help="draw tissue and acquisition from the seed (instead of --bvals/--ndirs/--nb0/--snr; "
                          "--scheme and --snr 0 are kept)")
    sim.add_argument("--scheme", nargs=2, type=Path, metavar=("BVAL", "BVEC"),
                     help="use this FSL gradient scheme instead of --bvals/--ndirs/--nb0")
    sim.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    sim.add_argument("--angles", type=_floats, default=(90.0,), metavar="A[,A]",
                     help="crossing preset: angles of bundles 2 (and 3) to bundle 1, degrees (default: 90)")
    sim.add_argument("--n-bundles", type=int, default=None,
                     help="random presets: number of bundles (default: 6 for random, 12-30 drawn from the seed "
                          "for brain-random)")
    sim.add_argument("--streamlines-per-bundle", type=int, default=None,
                     help="ground-truth streamlines per bundle (default: preset's, 200/100/150/300)")
    sim.add_argument("--voxel-size", type=float, default=None, metavar="MM",
                     help="voxel edge in mm, for crossing, random and the brain presets (default: 2; brain presets: 1.25-3)")
    sim.add_argument("--step-mm", type=float, default=1.0, help="ground-truth streamline step (default: 1 mm)")
    sim.add_argument("--supersample", type=int, default=3,
                     help="sub-samples per voxel edge for partial volume (default: %(default)s)")
    sim.add_argument("--radiological", action="store_true",
                     help="write a negative-determinant (LAS) affine instead of RAS")
    sim.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    sim.set_defaults(func=cmd_simulate)


def phantom_config(args: argparse.Namespace):
    from ..io.gradients import flip_for_fsl, read_gradients
    from ..phantom import PhantomConfig
    from ..phantom.simulate import phantom_affine

    scheme = None
    if args.scheme is not None:  # FSL files -> the data-array frame of the phantom to be written
        bvals, bvecs = read_gradients(*args.scheme)
        scheme = (bvals, flip_for_fsl(bvecs, phantom_affine((1, 1, 1), 1.0, args.radiological)))
    if args.randomize:
        fixed = [f"--{k}" for k in ("bvals", "ndirs", "nb0") if getattr(args, k) is not None]
        fixed += ["--snr"] if args.snr not in (None, 0) else []
        if fixed:
            raise ConfigError(f"--randomize draws the scheme and the SNR; drop {', '.join(fixed)} "
                              "(--scheme keeps a given scheme, --snr 0 makes a noise-free phantom)")
    # options left out take PhantomConfig's defaults (the one place they are written)
    given = {k: getattr(args, k) for k in ("bvals", "nb0") if getattr(args, k) is not None}
    if args.snr is not None:
        given["snr"] = None if args.snr == 0 else args.snr
    if args.ndirs is not None:
        shells = len(given.get("bvals", PhantomConfig.bvals))
        if len(args.ndirs) not in (1, shells):
            raise ConfigError(f"--ndirs gives {len(args.ndirs)} counts for {shells} shells")
        given["ndirs"] = args.ndirs[0] if len(args.ndirs) == 1 else args.ndirs
    return PhantomConfig(preset=args.preset, seed=args.seed, **given, scheme=scheme, randomize=args.randomize,
                         streamlines_per_bundle=args.streamlines_per_bundle, step_mm=args.step_mm,
                         supersample=args.supersample, radiological=args.radiological,
                         angles=args.angles, n_bundles=args.n_bundles, voxel_size=args.voxel_size)


def cmd_simulate(args: argparse.Namespace) -> int:
    from ..io.atomic import check_output
    from ..pipeline import Console, simulate_to

    check_output(args.out, args.force, inputs=list(args.scheme or ()))
    simulate_to(phantom_config(args), args.out, console=Console(quiet=args.quiet), force=args.force,
                inputs=list(args.scheme or ()))
    return 0
