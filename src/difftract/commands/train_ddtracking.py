"""``difftract train ddtracking``: parse the options and call :func:`.models.ddtracking.train.train_ddtracking`."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import stream
from .common import add_training_run_arguments

EPILOG = """\
Each SUBJECT_DIR holds dwi.nii.gz, dwi.bval, dwi.bvec, mask.nii.gz and a reference tractogram
(tractogram.trk, .tck or .trx), as `difftract simulate` writes. The input is the SH (descoteaux07,
lmax 6) of the b0-normalised shell nearest b=1000, or with --input fodf the CSD fODF (lmax 6, the
highest shell, times 2 sqrt(pi): about 1 in white matter); the streamlines are resampled to --step voxels.
Both are cached per subject in --cache-dir (default: W.cache/ next to the weights).
The last --val-subjects subjects are held out for validation (with one subject, 10% of its
streamlines are).

outputs:
  W.pt               best-validation weights (load with torch.load(..., weights_only=True))
  W.ckpt.pt          checkpoint after every epoch (model, optimizer, scheduler, RNG states); --resume
  W.metrics.jsonl    one line of losses, mean angle error and learning rate per epoch
  W.json             provenance sidecar

examples:
  difftract train ddtracking sims/train* --out ddt.pt --epochs 30
  difftract train ddtracking sims/train* --out st.pt --variant spatial_temporal
  torchrun --nproc_per_node 2 -m difftract train ddtracking sims/train* --out ddt.pt
  difftract train ddtracking --stream random --subjects-per-epoch 8 --out ddt.pt
"""


def add_parser(models) -> None:
    from ..models.ddtracking.model import INPUTS, VARIANTS
    from ..models.ddtracking.train import STREAM_SUBJECTS_PER_EPOCH, DDTrackingTrainOptions

    o = DDTrackingTrainOptions()
    d, diff = o.model, o.diffusion
    p = models.add_parser("ddtracking", help="DDTracking: a diffusion policy for streamline propagation",
                          description="Train DDTracking on the reference streamlines of subject directories.",
                          epilog=EPILOG + "\n" + stream.EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("subjects", type=Path, nargs="*", metavar="SUBJECT_DIR", help="training subject directories")
    p.add_argument("--out", type=Path, required=True, metavar="W", help="output weights (.pt)")
    p.add_argument("--variant", choices=VARIANTS, default=d.variant,
                   help="(ablations of the paper; default: %(default)s)")
    arch = p.add_argument_group("architecture (defaults: the paper's)")
    arch.add_argument("--gru-hidden", type=int, default=d.gru_hidden, help="(default: %(default)s)")
    arch.add_argument("--gru-layers", type=int, default=d.gru_layers, help="(default: %(default)s)")
    arch.add_argument("--z-dim", type=int, default=d.z_dim, help="spatial encoding to the GRU (default: %(default)s)")
    arch.add_argument("--v-dim", type=int, default=d.v_dim, help="local condition (default: %(default)s)")
    arch.add_argument("--conv-channels", type=int, default=d.conv_channels, help="(default: %(default)s)")
    arch.add_argument("--mlp-hidden", type=int, default=d.mlp_hidden,
                      help="each spatial branch's MLP (default: %(default)s)")
    arch.add_argument("--denoiser-width", type=int, default=d.denoiser_width, help="(default: %(default)s)")
    arch.add_argument("--one-head", action="store_true", help="predict h only; eps derived from it")
    data = p.add_argument_group("data")
    data.add_argument("--input", choices=INPUTS, default=d.input,
                      help="what the network reads: the signal SH (the paper) or the CSD fODF SH (default: %(default)s)")
    data.add_argument("--step", type=float, default=o.step, help="tracking step, voxels (default: %(default)s)")
    data.add_argument("--window", type=int, default=o.window,
                      help="most points per training sequence (default: %(default)s)")
    data.add_argument("--jitter", type=float, default=o.jitter,
                      help="offset of the input points from the streamline, voxels (default: %(default)s)")
    data.add_argument("--jitter-corr", type=float, default=o.jitter_corr,
                      help="correlation of consecutive offsets (default: %(default)s)")
    data.add_argument("--seed-angle", type=float, default=o.seed_angle,
                      help="error of the first previous direction, degrees (default: %(default)s)")
    data.add_argument("--augment", action="store_true",
                      help="turn each training window by one of the 48 symmetries of the voxel grid (exact)")
    data.add_argument("--equivariance", type=float, default=o.equivariance, metavar="WEIGHT",
                      help="weight of a penalty on the network's equivariance gap: each batch also runs turned by a "
                           "random grid symmetry (about 2x the time; default: %(default)s, none)")
    data.add_argument("--samples-per-epoch", type=int, default=o.samples_per_epoch, help="(default: %(default)s)")
    data.add_argument("--val-samples", type=int, default=o.val_samples, help="(default: %(default)s)")
    data.add_argument("--val-subjects", type=int, default=o.val_subjects,
                      help="subjects held out (default: %(default)s)")
    data.add_argument("--cache-dir", type=Path, help="feature cache (default: W.cache/)")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, default=o.epochs, help="(default: %(default)s)")
    opt.add_argument("--batch-size", type=int, default=o.batch_size,
                     help="streamline windows per step (default: %(default)s)")
    opt.add_argument("--init", metavar="W", help="start from these weights (a file, or a shipped model: full, fast) of "
                                                 "the same architecture")
    opt.add_argument("--lr", type=float, default=o.lr, help="AdamW learning rate (default: %(default)s)")
    opt.add_argument("--weight-decay", type=float, default=o.weight_decay, help="(default: %(default)s)")
    opt.add_argument("--patience", type=int, default=o.patience,
                     help="early-stopping patience, epochs (default: %(default)s)")
    opt.add_argument("--k-min", type=float, default=diff.k_min, help="smallest diffusion time (default: %(default)s)")
    opt.add_argument("--max-weight", type=float, default=diff.max_weight,
                     help="clip of the loss weights lambda1, lambda2 (default: %(default)s)")
    add_training_run_arguments(p, seed=o.seed, device=o.device)
    stream.add_arguments(p, default_subjects=STREAM_SUBJECTS_PER_EPOCH)
    p.set_defaults(func=cmd_train_ddtracking)


def cmd_train_ddtracking(args: argparse.Namespace) -> int:
    from ..models.ddtracking.diffusion import DiffusionConfig
    from ..models.ddtracking.model import DDTrackingConfig
    from ..models.ddtracking.train import DDTrackingTrainOptions, train_ddtracking
    from ..pipeline import Console

    model = DDTrackingConfig(variant=args.variant, gru_hidden=args.gru_hidden, gru_layers=args.gru_layers,
                             z_dim=args.z_dim, v_dim=args.v_dim, conv_channels=args.conv_channels,
                             mlp_hidden=args.mlp_hidden, denoiser_width=args.denoiser_width, one_head=args.one_head,
                             input=args.input)
    options = DDTrackingTrainOptions(
        model=model, diffusion=DiffusionConfig(k_min=args.k_min, max_weight=args.max_weight), step=args.step,
        window=args.window, jitter=args.jitter, jitter_corr=args.jitter_corr, seed_angle=args.seed_angle,
        augment=args.augment, equivariance=args.equivariance, init=args.init,
        samples_per_epoch=args.samples_per_epoch, val_samples=args.val_samples, val_subjects=args.val_subjects,
        cache_dir=args.cache_dir, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, patience=args.patience, seed=args.seed, device=args.device)
    train_ddtracking(args.out, args.subjects, options, stream=stream.stream_options(args),
                     console=Console(quiet=args.quiet), resume=args.resume, force=args.force)
    return 0
