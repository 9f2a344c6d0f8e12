"""``difftract track``: streamlines from an fODF field (fitted, or given with --sh), streamed to a file."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from ..io.sh import BASES as SH_BASES
from ..models.ddtracking.defaults import DEFAULT_MODEL, SHIPPED_MODELS
from .common import add_compute_arguments, add_network_arguments, add_scan_arguments, load_scan, scan_inputs

EPILOG = """\
direction rules (--method):
  det      DIPY's deterministic maximum of the fODF within the cone (streamline for streamline
           DIPY's deterministic_tracking in float64)
  prob     DIPY's probabilistic rule: a direction drawn from the fODF within the cone (--seed)
  closest  DIPY's closest-peak rule: every seed peak starts a streamline
  peak     differentiable blend of per-voxel fODF peaks (the rule gradients flow through)
  ddtracking  the learned DDTracking policy (--weights, default: the shipped --model full|fast) on the SH of the
           b0-normalised DWI (lmax 6, shell nearest b=1000), or on the CSD fODF (lmax 6, highest
           shell) for weights trained with --input fodf: a GRU over the streamline so far and a
           diffusion sampler (--sampler-steps; --stochastic draws, fixed by --seed); seeds start along
           the signal's principal direction (the fODF's maximum for --input fodf weights); default
           step: the model's training step (1 voxel).
           The SH is fitted inside --mask: give the brain mask (as in training), and the white
           matter as --stop-mask. A scan outside the network's training data (the read shell's
           b-value and direction count, voxel size, b0 SNR: the weights' domain) gets a one-line
           warning, recorded in the sidecar (domain_warnings). --fodf-guide W moves each of its
           steps the fraction W of the way to the CSD fODF peak it points at (--sh, or fitted on
           the highest shell with enough directions) within 30 degrees: the network chooses the
           bundle and the peak, the fODF sharpens the orientation. W defaults to the weight
           validated for the shipped model (0.3 full, 0.7 fast; 0 for other --weights);
           --fodf-guide 0 is the network alone, without a CSD fit

The fODF is --sh (descoteaux07 SH, basis from its sidecar or --sh-basis) or, without it, a
CSD fit of the scan (lmax --lmax, auto response). Tracking stops outside --stop-mask (default
--mask; nearest voxel) or, with --fa-threshold, where the (trilinear) DTI FA falls to it.
Seeds: --seeds-per-voxel random points (default 1; ddtracking: its weights') or a --seed-density
grid in every voxel of --seed-mask (default: the stopping mask), or --seeds-file (RAS mm,
one "x y z" per line).
A streamline keeps int(min-len/step) to int(max-len/step) points (longer ones are dropped),
the point that stops it is not kept (DIPY's rules).

examples:
  difftract track dwi.nii.gz dwi.bval dwi.bvec --mask wm.nii.gz --out tracks.trx
  difftract track dwi.nii.gz dwi.bval dwi.bvec --mask mask.nii.gz --sh fod.nii.gz --fa-threshold 0.2 \\
      --seed-mask wm.nii.gz --seed-density 2 --method prob --seed 3 --out tracks.tck
  difftract track dwi.nii.gz dwi.bval dwi.bvec --mask brain.nii.gz --stop-mask wm.nii.gz \\
      --method ddtracking --model fast --out dd.trx
  difftract track dwi.nii.gz dwi.bval dwi.bvec --mask brain.nii.gz --stop-mask wm.nii.gz \\
      --method ddtracking --stochastic --sampler-steps 5 --seed 1 --weights my.pt --out dd_prob.trx
  difftract track dwi.nii.gz dwi.bval dwi.bvec --mask brain.nii.gz --stop-mask wm.nii.gz \\
      --method ddtracking --fodf-guide 0 --out dd_network_alone.trx
"""


def add_parser(sub) -> None:
    from ..tracking.getters import METHODS
    from ..tracking.integrators import INTEGRATORS

    p = sub.add_parser("track", help="track streamlines (det, prob, closest-peak, peak) into .trx/.trk/.tck",
                       description="Track streamlines through an fODF field, all seeds of a chunk advancing "
                                   "together in torch (CPU or GPU), and stream them to a tractogram file.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_scan_arguments(p)
    p.add_argument("--out", type=Path, required=True, metavar="T", help="output tractogram (.trx, .trk or .tck)")
    p.add_argument("--method", choices=METHODS + ("ddtracking",), default="det",
                   help="direction rule (default: %(default)s)")
    p.add_argument("--weights", type=Path, metavar="W", help="DDTracking weights (default: the shipped --model)")
    p.add_argument("--model", choices=tuple(SHIPPED_MODELS), metavar="{full,fast}",
                   help=f"the shipped DDTracking model: the paper's sizes or the small CPU one (default: {DEFAULT_MODEL})")
    p.add_argument("--sampler-steps", type=int, default=1, metavar="S",
                   help="DDTracking reverse-diffusion steps (default: %(default)s, the one-step regression)")
    p.add_argument("--stochastic", action="store_true",
                   help="DDTracking: sample from noise (probabilistic tracking; --seed fixes the draws)")
    p.add_argument("--fodf-guide", type=float, metavar="W",
                   help="DDTracking: move each step the fraction W of the way to the CSD fODF peak it points at "
                        "(--sh, or fitted); 0: the network alone (default: the weight validated for the model, 0.3 for "
                        "--model full and 0.7 for fast; 0 for other --weights)")
    add_network_arguments(p)
    p.add_argument("--sh", type=Path, metavar="FOD",
                   help="fODF SH volume to track, or to guide DDTracking with (default: fit CSD)")
    p.add_argument("--sh-basis", choices=SH_BASES, help="basis of --sh (default: from its JSON sidecar)")
    p.add_argument("--lmax", type=int, help="lmax of the CSD fit without --sh (default: 8; for DDTracking's guide the "
                                            "highest up to 8 its shell allows: the highest shell with enough "
                                            "directions for lmax 6, or for --lmax)")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seeds-per-voxel", type=int, metavar="N",
                       help="N random seeds in every seed voxel (default: 1; ddtracking: its weights' own)")
    seeds.add_argument("--seed-density", type=int, metavar="D", help="a regular D x D x D grid in every seed voxel")
    seeds.add_argument("--seeds-file", type=Path, metavar="S", help="seed points in RAS mm, one 'x y z' per line")
    p.add_argument("--seed-mask", type=Path, metavar="M", help="where to seed (default: the stopping mask)")
    p.add_argument("--stop-mask", type=Path, metavar="M", help="tracking mask (default: --mask)")
    p.add_argument("--fa-threshold", type=float, metavar="T", help="stop where DTI FA <= T instead of at a mask")
    p.add_argument("--step-mm", type=float, help="step size, mm (default: 1; ddtracking: the model's step)")
    p.add_argument("--max-angle", type=float, default=45.0, help="largest turn per step, degrees (default: %(default)s)")
    p.add_argument("--min-len-mm", type=float, default=20.0, help="shortest streamline kept, mm (default: %(default)s)")
    p.add_argument("--max-len-mm", type=float, default=250.0, help="longest streamline kept, mm (default: %(default)s)")
    p.add_argument("--integrator", choices=INTEGRATORS, default="euler", help="(default: %(default)s)")
    p.add_argument("--pmf-threshold", type=float, default=0.1,
                   help="fODF values below this fraction of the largest are ignored (default: %(default)s)")
    p.add_argument("--valid-only", action="store_true",
                   help="keep only streamlines whose both ends reached a stopping point (not a dead end)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    add_compute_arguments(p, dtype_help="tracking precision; auto is float32 (float64 reproduces DIPY to ~1e-14 mm)",
                          chunk_help="seeds tracked at once; bounds memory (default: 20000 on CPU, 200000 on GPU, "
                                    "fewer when a quarter of the free memory cannot hold them: a DDTracking "
                                    "seed costs ~10x a classical one)")
    p.set_defaults(func=cmd_track)


def cmd_track(args: argparse.Namespace) -> int:
    from ..io.atomic import check_outputs
    from ..io.dwi import load_mask
    from ..io.grid import load_grid
    from ..io.seeds import load_seeds_file
    from ..io.sh import load_sh, sh_basis_of
    from ..io.sidecar import sidecar_path
    from ..pipeline import Compute, Console, FodSource, LearnedSource, Seeding, Stopping, TrackOptions, track
    from ..pipeline.shards import join
    from ..pipeline.sources import load_network

    given = [p for p in (args.sh, args.stop_mask, args.seed_mask, args.seeds_file, args.weights) if p]
    check_outputs([args.out, sidecar_path(args.out)], args.force, inputs=scan_inputs(args) + given)
    if (args.weights is not None or args.model is not None) and args.method != "ddtracking":
        raise ConfigError("--weights and --model only apply to --method ddtracking")
    if args.sh_basis is not None and args.sh is None:
        raise ConfigError("--sh-basis names the basis of --sh; give --sh too (a fitted fODF is descoteaux07)")
    if args.seed_mask is not None and args.seeds_file is not None:
        raise ConfigError("--seeds-file gives the seed points; --seed-mask would be ignored: give one of them")
    options = TrackOptions(method=args.method, step_mm=args.step_mm, seeds_per_voxel=args.seeds_per_voxel,
                           max_angle=args.max_angle, min_len_mm=args.min_len_mm, max_len_mm=args.max_len_mm,
                           integrator=args.integrator, pmf_threshold=args.pmf_threshold, valid_only=args.valid_only,
                           sampler_steps=args.sampler_steps, stochastic=args.stochastic, fodf_guide=args.fodf_guide,
                           matmul_dtype=args.matmul_dtype, symmetries=args.symmetries, seed=args.seed)
    compute = Compute(device=args.device, dtype=args.dtype, chunk_size=args.chunk_size)
    group = join(compute.torch_device)     # under torchrun: each rank on its own device, rank 0 speaks
    console = Console(quiet=args.quiet or (group is not None and not group.leader))
    model, guided = load_network(args.weights, args.model, options) if args.method == "ddtracking" else (None, False)
    if model is not None and args.sh is not None and not guided:
        raise ConfigError("--sh is for the classical rules or a --fodf-guide (0 here): DDTracking reads the DWI itself")
    stop_path = args.stop_mask or args.mask
    if stop_path is None and args.fa_threshold is None:
        raise ConfigError("tracking needs a stopping rule: give --mask, --stop-mask or --fa-threshold")
    reads_signal = model is not None or args.sh is None or args.fa_threshold is not None
    dwi = load_scan(args) if reads_signal else load_grid(args.dwi, args.bval, args.bvec, args.mask)
    fit_compute = Compute(device=args.device, chunk_size=args.chunk_size)   # the fits' own precision
    fod = None      # the fODF of the classical rules, or the one that guides DDTracking
    if args.sh is not None:
        fod = FodSource(load_sh(args.sh, dwi), sh_basis_of(args.sh, args.sh_basis), description=str(args.sh),
                        mask=dwi.mask)
    elif model is None:
        fod = FodSource.fitted(dwi, 8 if args.lmax is None else args.lmax, fit_compute, console)
    elif guided and args.lmax is not None:      # else LearnedSource fits the guide's when it needs it
        fod = FodSource.for_guide(dwi, fit_compute, console, args.lmax)
    source = fod if model is None else LearnedSource.fitted(*model, dwi, device=compute.torch_device, fod=fod)
    stop = load_mask(args.stop_mask, dwi.shape, dwi.affine, "stop mask") if args.stop_mask else dwi.mask
    if args.fa_threshold is not None:
        stopping = Stopping.from_fa(dwi, args.fa_threshold, fit_compute, console)
    else:
        stopping = Stopping.from_mask(stop, str(stop_path))
    seed_mask = load_mask(args.seed_mask, dwi.shape, dwi.affine, "seed mask") if args.seed_mask else stop
    seeding = Seeding(mask=seed_mask, density=args.seed_density,
                      points=load_seeds_file(args.seeds_file, dwi.affine) if args.seeds_file else None,
                      description=str(args.seeds_file or args.seed_mask or args.stop_mask or args.mask))
    track(dwi, args.out, source, stopping, seeding, options, compute=compute, console=console, force=args.force,
          inputs=given)
    return 0
