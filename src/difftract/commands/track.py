"""``difftract track``: streamlines from an fODF field (fitted, or given with --sh), streamed to a file."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from ..errors import ConfigError, InputError
from .common import add_compute_arguments, add_scan_arguments, load_scan, memory_guard, scan_inputs

log = logging.getLogger("difftract")
BASES = ("descoteaux07", "descoteaux07_legacy")

EPILOG = """\
direction rules (--method):
  det      DIPY's deterministic maximum of the fODF within the cone (streamline for streamline
           DIPY's deterministic_tracking in float64)
  prob     DIPY's probabilistic rule: a direction drawn from the fODF within the cone (--seed)
  closest  DIPY's closest-peak rule: every seed peak starts a streamline
  peak     differentiable blend of per-voxel fODF peaks (the rule gradients flow through)
  ddtracking  the learned DDTracking policy (--weights, default: the shipped model) on the SH of the
           b0-normalised DWI (lmax 6, shell nearest b=1000): a GRU over the streamline so far and a
           diffusion sampler (--sampler-steps; --stochastic draws, fixed by --seed); seeds start along
           the signal's principal direction; default step: the model's training step (1 voxel).
           The SH is fitted inside --mask: give the brain mask (as in training), and the white
           matter as --stop-mask

The fODF is --sh (descoteaux07 SH, basis from its sidecar or --sh-basis) or, without it, a
CSD fit of the scan (lmax --lmax, auto response). Tracking stops outside --stop-mask (default
--mask; nearest voxel) or, with --fa-threshold, where the (trilinear) DTI FA falls to it.
Seeds: --seeds-per-voxel random points (default 1; 5 for ddtracking) or a --seed-density
grid in every voxel of --seed-mask (default: the stopping mask), or --seeds-file (RAS mm,
one "x y z" per line).
A streamline keeps int(min-len/step) to int(max-len/step) points (longer ones are dropped),
the point that stops it is not kept (DIPY's rules).

examples:
  difftract track dwi.nii.gz dwi.bval dwi.bvec --mask wm.nii.gz --out tracks.trx
  difftract track dwi.nii.gz dwi.bval dwi.bvec --mask mask.nii.gz --sh fod.nii.gz --fa-threshold 0.2 \\
      --seed-mask wm.nii.gz --seed-density 2 --method prob --seed 3 --out tracks.tck
  difftract track dwi.nii.gz dwi.bval dwi.bvec --mask brain.nii.gz --stop-mask wm.nii.gz \\
      --method ddtracking --out dd.trx
  difftract track dwi.nii.gz dwi.bval dwi.bvec --mask brain.nii.gz --stop-mask wm.nii.gz \\
      --method ddtracking --stochastic --sampler-steps 5 --seed 1 --weights my.pt --out dd_prob.trx
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
    p.add_argument("--weights", type=Path, metavar="W", help="DDTracking weights (default: the shipped model)")
    p.add_argument("--sampler-steps", type=int, default=1, metavar="S",
                   help="DDTracking reverse-diffusion steps (default: %(default)s, the one-step regression)")
    p.add_argument("--stochastic", action="store_true",
                   help="DDTracking: sample from noise (probabilistic tracking; --seed fixes the draws)")
    p.add_argument("--sh", type=Path, metavar="FOD", help="fODF SH volume to track (default: fit CSD)")
    p.add_argument("--sh-basis", choices=BASES, help="basis of --sh (default: from its JSON sidecar)")
    p.add_argument("--lmax", type=int, default=8, help="lmax of the CSD fit without --sh (default: %(default)s)")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seeds-per-voxel", type=int, metavar="N",
                       help="N random seeds in every seed voxel (default: 1; 5 for ddtracking)")
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


def sh_basis_of(path: Path, given: str | None) -> bool:
    """Whether the SH file uses the legacy basis: from ``given`` or from the file's sidecar."""
    from ..io.sidecar import sidecar_path

    if given is not None:
        return given == "descoteaux07_legacy"
    sidecar = sidecar_path(path)
    try:
        basis = json.loads(sidecar.read_text()).get("sh_basis")
    except (OSError, ValueError):
        basis = None
    if basis not in BASES:
        raise InputError(path, f"cannot tell its SH basis (no 'sh_basis' in {sidecar.name}): give --sh-basis "
                               "descoteaux07 (difftract's default) or descoteaux07_legacy (DIPY's and scilpy's)")
    return basis == "descoteaux07_legacy"


def load_seeds_file(path: Path, affine: np.ndarray) -> np.ndarray:
    """Seeds in RAS mm (one ``x y z`` per line) -> voxel coordinates."""
    from nibabel.affines import apply_affine

    if not path.is_file():
        raise InputError(path, "seeds file not found" if not path.exists() else "seeds path is not a file")
    try:
        points = np.loadtxt(path, dtype=np.float64, ndmin=2, comments="#")
    except ValueError as exc:
        raise InputError(path, f"seeds file is not numeric 'x y z' lines ({exc})") from None
    if points.size == 0:
        raise InputError(path, "seeds file holds no seed")
    if points.shape[1] != 3:
        raise InputError(path, f"seeds file needs 3 columns (x y z in mm), found {points.shape[1]}")
    if not np.isfinite(points).all():
        raise InputError(path, "seeds file contains NaN or Inf")
    return apply_affine(np.linalg.inv(affine), points)


def _fod(args, dwi, options):
    """The fODF coefficients and whether their basis is legacy."""
    from ..io.nifti import load_nifti

    if args.sh is not None:
        legacy = sh_basis_of(args.sh, args.sh_basis)
        img = load_nifti(args.sh, "fODF SH", dtype=np.float32)
        if img.ndim != 4 or img.shape[:3] != dwi.shape:
            raise InputError(args.sh, f"fODF SH must be (X, Y, Z, n_coeffs) on the DWI grid {dwi.shape}, "
                                      f"got {img.shape}")
        if not np.allclose(img.affine, dwi.affine, atol=1e-3):
            raise InputError(args.sh, "fODF SH affine differs from the DWI affine")
        return np.asarray(img.dataobj), legacy
    from ..reconst.csd import CsdModel

    log.info("no --sh: fitting CSD (lmax %d, auto response)", args.lmax)
    fit = CsdModel(dwi.gtab, lmax=args.lmax, legacy=False).fit(dwi.signal, dwi.mask, **options)
    return fit.coeffs.astype(np.float32), False


def cmd_track(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from ..device import resolve_device
    from ..io.atomic import check_outputs
    from ..io.dwi import load_mask
    from ..io.sidecar import provenance, sidecar_path
    from ..io.stream import open_writer
    from ..reconst.peaks import peaks_from_sh
    from ..tracking.getters import make_getter
    from ..tracking.seeding import grid_seeds, random_seeds
    from ..tracking.sh_field import SHField
    from ..tracking.stopping import BinaryCriterion, ThresholdCriterion
    from ..tracking.tracker import CHUNK_CPU, CHUNK_CUDA, Tracker, TrackingParams, default_chunk_size

    check_outputs([args.out, sidecar_path(args.out)], args.force,
                  inputs=scan_inputs(args) + [p for p in (args.sh, args.stop_mask, args.seed_mask, args.seeds_file,
                                                          args.weights) if p])
    given = [f"--{k}" for k, on in (("weights", args.weights is not None), ("stochastic", args.stochastic),
                                     ("sampler-steps", args.sampler_steps != 1)) if on]
    if given and args.method != "ddtracking":
        raise ConfigError(f"{', '.join(given)} only apply to --method ddtracking")
    if args.sampler_steps < 1:
        raise ConfigError(f"--sampler-steps must be at least 1, got {args.sampler_steps}")
    if args.method == "ddtracking" and args.integrator != "euler":
        raise ConfigError("DDTracking advances its GRU one point per step: use --integrator euler")
    learned = _load_ddtracking(args) if args.method == "ddtracking" else None
    dwi = load_scan(args)
    if args.seeds_per_voxel is None:
        args.seeds_per_voxel = 5 if learned is not None else 1
    if learned is None:
        args.step_mm = 1.0 if args.step_mm is None else args.step_mm
    else:
        trained = learned[1].get("step_voxels", 1.0) * float(min(dwi.voxel_sizes))
        if args.step_mm is None:
            args.step_mm = trained
        elif abs(args.step_mm - trained) > 1e-6 * trained:
            log.warning("--step-mm %g differs from the step DDTracking was trained with (%g mm here)",
                        args.step_mm, trained)
        if not np.allclose(dwi.voxel_sizes, min(dwi.voxel_sizes), rtol=1e-3):
            log.warning("%s has anisotropic voxels %s: DDTracking was trained in voxel units, so its steps and "
                        "directions are converted, but resampling to isotropic voxels matches training better",
                        args.dwi, tuple(round(float(v), 3) for v in dwi.voxel_sizes))
    params = TrackingParams(step_mm=args.step_mm, min_len_mm=args.min_len_mm, max_len_mm=args.max_len_mm,
                            integrator=args.integrator, return_all=not args.valid_only)
    if args.chunk_size is not None and args.chunk_size < 1:
        raise ConfigError(f"--chunk-size must be at least 1, got {args.chunk_size}")
    device = resolve_device(args.device)
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    fit_options = {"device": device, "dtype": "float64" if device.type == "cpu" else "float32",
                   "progress": False if args.quiet else None}
    stop_path = args.stop_mask or args.mask
    if stop_path is None and args.fa_threshold is None:
        raise ConfigError("tracking needs a stopping rule: give --mask, --stop-mask or --fa-threshold")

    stop = load_mask(stop_path, dwi.shape, dwi.affine, "stop mask" if args.stop_mask else "brain mask") \
        if stop_path is not None else None
    seed_mask = load_mask(args.seed_mask, dwi.shape, dwi.affine, "seed mask") if args.seed_mask else stop
    if args.seeds_file is not None:
        seeds = load_seeds_file(args.seeds_file, dwi.affine)
    elif seed_mask is None:
        raise ConfigError("no seed mask: give --seed-mask (or --stop-mask/--mask), or --seeds-file")
    elif args.seed_density is not None:
        seeds = grid_seeds(seed_mask, args.seed_density)
    else:
        seeds = random_seeds(seed_mask, args.seeds_per_voxel, torch.Generator().manual_seed(args.seed))
    seeds = torch.as_tensor(seeds, dtype=torch.float64)

    if learned is not None:
        from ..models.ddtracking.data import signal_sh
        from ..models.ddtracking.getter import DDTrackingGetter
        from ..reconst.sh import lmax_from_ncoeffs

        legacy = False
        sh = signal_sh(dwi, lmax_from_ncoeffs(learned[0].config.n_coeffs), device=device)
        getter = DDTrackingGetter(learned[0], sh, args.max_angle,
                                  args.sampler_steps, args.stochastic, voxel_sizes=dwi.voxel_sizes)
    else:
        with memory_guard(f"the CSD fit (lmax {args.lmax})", device, None):
            coeffs, legacy = _fod(args, dwi, fit_options)
        field = SHField(coeffs, legacy=legacy, pmf_threshold=args.pmf_threshold)
        peaks = None
        if args.method == "peak":
            found = peaks_from_sh(coeffs, dwi.mask, legacy=legacy, **fit_options)
            peaks = torch.as_tensor(found.dirs)
        getter = make_getter(args.method, sh=field, peaks=peaks, max_angle=args.max_angle)
    if args.fa_threshold is not None:
        from ..reconst.dti import TensorModel

        fa = np.nan_to_num(TensorModel(dwi.gtab).fit(dwi.signal, dwi.mask, **fit_options).fa)
        criterion = ThresholdCriterion(fa, args.fa_threshold)
    else:
        criterion = BinaryCriterion(stop)
    chunk = args.chunk_size or default_chunk_size(getter, params, device, dtype)
    if args.chunk_size is None and chunk < min(len(seeds), CHUNK_CUDA if device.type == "cuda" else CHUNK_CPU):
        log.warning("free memory allows %d seeds per chunk, fewer than the default; random draws are made per chunk, "
                    "so give --chunk-size %d to reproduce this tractogram elsewhere", chunk, chunk)
    tracker = Tracker(getter, criterion, dwi.voxel_sizes, params, device=device, dtype=dtype, chunk_size=chunk)

    record = provenance("track", {"method": args.method, **params.to_dict(), "max_angle": args.max_angle,
                                  "pmf_threshold": args.pmf_threshold, "stopping": (
                                      f"FA > {args.fa_threshold}" if args.fa_threshold is not None
                                      else f"mask {stop_path}"),
                                  "seeding": _seeding(args), "device": str(device), "dtype": str(dtype),
                                  "chunk_size": chunk, **_source(args, learned)},
                        seed=args.seed, inputs=scan_inputs(args) + [p for p in (args.sh, args.stop_mask, args.seed_mask,
                                                                                args.seeds_file, args.weights) if p],
                        sh_basis=BASES[int(legacy)])
    start = time.perf_counter()
    lengths_mm = []
    with open_writer(args.out, dwi.affine, dwi.shape, force=args.force) as writer, \
            tqdm(total=len(seeds), unit="seed", desc=f"track {args.method}", disable=True if args.quiet else None,
                 leave=False) as bar:
        for out in _guarded(tracker.track(seeds, seed=args.seed, progress=bar), args.method, device, chunk):
            writer.write(out.points.detach().cpu().numpy(), out.lengths.cpu().numpy())
            lengths_mm.append((out.lengths.cpu().numpy() - 1) * args.step_mm)
        seconds = time.perf_counter() - start
        lengths_mm = np.concatenate(lengths_mm) if lengths_mm else np.zeros(0)
        writer.sidecar = {**record, "n_seeds": int(len(seeds)), "n_streamlines": int(writer.n_streamlines),
                          "n_points": int(writer.n_points), "seconds": round(seconds, 3)}
    rate = len(seeds) / max(seconds, 1e-9)
    print(f"{args.method}: {writer.n_streamlines:,} streamlines from {len(seeds):,} seeds in {seconds:.1f} s "
          f"({rate:,.0f} seeds/s on {device}, {str(dtype).replace('torch.', '')}) -> {args.out}")
    if writer.n_streamlines == 0:
        log.warning("no streamline was kept: every seed stopped before --min-len-mm %g (or found no direction); "
                    "check the stopping mask and the seeds", args.min_len_mm)
    if len(lengths_mm):
        print(f"  length median {np.median(lengths_mm):.1f} mm (5-95%: {np.percentile(lengths_mm, 5):.1f}-"
              f"{np.percentile(lengths_mm, 95):.1f})")
    return 0


def _guarded(chunks, method: str, device, chunk: int):
    """The tracker's chunks, with running out of memory turned into one line naming --chunk-size."""
    iterator = iter(chunks)
    while True:
        with memory_guard(f"{method} tracking", device, chunk, unit="seeds"):
            out = next(iterator, None)
        if out is None:
            return
        yield out


def _load_ddtracking(args):
    """The DDTracking network and its weights metadata (checked before the scan is read)."""
    from ..models.ddtracking.getter import load_ddtracking

    if args.sh is not None:
        raise ConfigError("--sh gives an fODF for the classical rules; DDTracking reads the DWI itself")
    return load_ddtracking(args.weights)


def _source(args, learned) -> dict:
    """What the directions came from, for the sidecar."""
    if learned is None:
        return {"fod": str(args.sh) if args.sh else f"CSD lmax {args.lmax}"}
    meta = learned[1]
    return {"model": "ddtracking", "variant": meta["config"]["variant"], "weights": meta["path"],
            "weights_sha256": meta["sha256"], "sampler_steps": args.sampler_steps,
            "stochastic": args.stochastic, "input": meta.get("input")}


def _seeding(args) -> str:
    if args.seeds_file is not None:
        return f"file {args.seeds_file}"
    where = args.seed_mask or args.stop_mask or args.mask
    if args.seed_density is not None:
        return f"grid density {args.seed_density} in {where}"
    return f"{args.seeds_per_voxel} random per voxel in {where}"
