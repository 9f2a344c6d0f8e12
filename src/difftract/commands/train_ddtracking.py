"""``difftract train ddtracking``: train the DDTracking policy on subject directories (also under ``torchrun``)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from . import stream

log = logging.getLogger("difftract")

EPILOG = """\
Each SUBJECT_DIR holds dwi.nii.gz, dwi.bval, dwi.bvec, mask.nii.gz and a reference tractogram
(tractogram.trk, .tck or .trx), as `difftract simulate` writes. The input is the SH (descoteaux07,
lmax 6) of the b0-normalised shell nearest b=1000; the streamlines are resampled to --step voxels.
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
    from ..models.ddtracking.model import VARIANTS, DDTrackingConfig

    d = DDTrackingConfig()
    p = models.add_parser("ddtracking", help="DDTracking: a diffusion policy for streamline propagation",
                          description="Train DDTracking on the reference streamlines of subject directories.",
                          epilog=EPILOG + "\n" + stream.EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("subjects", type=Path, nargs="*", metavar="SUBJECT_DIR", help="training subject directories")
    p.add_argument("--out", type=Path, required=True, metavar="W", help="output weights (.pt)")
    p.add_argument("--variant", choices=VARIANTS, default="full", help="(ablations of the paper; default: %(default)s)")
    arch = p.add_argument_group("architecture (defaults: the paper's)")
    arch.add_argument("--gru-hidden", type=int, default=d.gru_hidden, help="(default: %(default)s)")
    arch.add_argument("--gru-layers", type=int, default=d.gru_layers, help="(default: %(default)s)")
    arch.add_argument("--z-dim", type=int, default=d.z_dim, help="spatial encoding to the GRU (default: %(default)s)")
    arch.add_argument("--v-dim", type=int, default=d.v_dim, help="local condition (default: %(default)s)")
    arch.add_argument("--conv-channels", type=int, default=d.conv_channels, help="(default: %(default)s)")
    arch.add_argument("--denoiser-width", type=int, default=d.denoiser_width, help="(default: %(default)s)")
    arch.add_argument("--one-head", action="store_true", help="predict h only; eps derived from it")
    data = p.add_argument_group("data")
    data.add_argument("--step", type=float, default=1.0, help="tracking step, voxels (default: %(default)s)")
    data.add_argument("--window", type=int, default=64, help="most points per training sequence (default: %(default)s)")
    data.add_argument("--jitter", type=float, default=0.3,
                      help="offset of the input points from the streamline, voxels (default: %(default)s)")
    data.add_argument("--jitter-corr", type=float, default=0.7,
                      help="correlation of consecutive offsets (default: %(default)s)")
    data.add_argument("--seed-angle", type=float, default=15.0,
                      help="error of the first previous direction, degrees (default: %(default)s)")
    data.add_argument("--samples-per-epoch", type=int, default=2000, help="(default: %(default)s)")
    data.add_argument("--val-samples", type=int, default=256, help="(default: %(default)s)")
    data.add_argument("--val-subjects", type=int, default=1, help="subjects held out (default: %(default)s)")
    data.add_argument("--cache-dir", type=Path, help="feature cache (default: W.cache/)")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, default=50, help="(default: %(default)s)")
    opt.add_argument("--batch-size", type=int, default=32, help="streamline windows per step (default: %(default)s)")
    opt.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (default: %(default)s)")
    opt.add_argument("--weight-decay", type=float, default=0.01, help="(default: %(default)s)")
    opt.add_argument("--patience", type=int, default=8, help="early-stopping patience, epochs (default: %(default)s)")
    opt.add_argument("--k-min", type=float, default=1e-3, help="smallest diffusion time (default: %(default)s)")
    opt.add_argument("--max-weight", type=float, default=100.0,
                     help="clip of the loss weights lambda1, lambda2 (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue from W.ckpt.pt")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    stream.add_arguments(p, default_subjects=8)
    p.set_defaults(func=cmd_train_ddtracking)


def split_validation(subjects: list, n_val: int, seed: int) -> tuple[list, list]:
    """Hold out the last ``n_val`` subjects; with one subject, 10% of its streamlines (at least one)."""
    from ..models.ddtracking.data import DDSubject

    if len(subjects) > 1:
        if not 1 <= n_val < len(subjects):
            raise ConfigError(f"--val-subjects must be between 1 and {len(subjects) - 1}, got {n_val}")
        return subjects[: len(subjects) - n_val], subjects[len(subjects) - n_val:]
    s = subjects[0]
    if len(s.streamlines) < 2:
        raise ConfigError(f"subject {s.name} has a single streamline: nothing to validate on")
    order = np.random.default_rng(seed).permutation(len(s.streamlines))
    n = max(1, len(order) // 10)
    pick = lambda idx: [s.streamlines[i] for i in sorted(idx)]   # noqa: E731
    log.warning("one subject: validating on %d of its %d streamlines (not on an unseen subject)", n, len(order))
    return [DDSubject(s.name, s.sh, pick(order[n:]))], [DDSubject(s.name + ":val", s.sh, pick(order[:n]))]


def cmd_train_ddtracking(args: argparse.Namespace) -> int:
    import torch

    from ..device import resolve_device
    from ..io.atomic import check_outputs
    from ..io.sidecar import sidecar_path
    from ..memory import oom_guard
    from ..models.ddtracking.data import DDTrackingTask
    from ..models.ddtracking.diffusion import DiffusionConfig
    from ..models.ddtracking.model import DDTracking, DDTrackingConfig
    from ..phantom.splits import check_training_subject
    from ..training.files import output_paths, write_training_sidecar
    from ..training.loop import TrainConfig, train

    if not args.resume:
        check_outputs([*output_paths(args.out), sidecar_path(args.out)], args.force)
    for d in args.subjects:   # before any work: a test phantom is never trained on
        check_training_subject(d)
    if not args.step > 0:
        raise ConfigError(f"--step must be positive (voxels), got {args.step}")
    config = DDTrackingConfig(variant=args.variant, gru_hidden=args.gru_hidden, gru_layers=args.gru_layers,
                              z_dim=args.z_dim, v_dim=args.v_dim, conv_channels=args.conv_channels,
                              denoiser_width=args.denoiser_width, one_head=args.one_head)
    diff = DiffusionConfig(k_min=args.k_min, max_weight=args.max_weight)
    tc = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                     seed=args.seed, early_stop_patience=args.patience)
    device = resolve_device(args.device)
    stream.check_sources(args)
    noise = {"window": args.window, "jitter": args.jitter, "jitter_corr": args.jitter_corr,
             "seed_angle": args.seed_angle}
    if args.stream:
        pool, train_set, val_set, data_meta = _streamed_windows(args, noise)
    else:
        pool, (train_set, val_set, data_meta) = None, _subject_windows(args, noise)
    torch.manual_seed(args.seed)
    model = DDTracking(config)
    meta = {"model": "ddtracking", "config": config.as_dict(), "diffusion": dataclasses.asdict(diff),
            "step_voxels": args.step, **noise,
            "input": "SH descoteaux07 lmax 6 of the b0-normalised shell nearest b=1000", **data_meta}
    with pool if pool is not None else contextlib.nullcontext(), \
            oom_guard(f"DDTracking training on {device}", f"lower --batch-size (it was {args.batch_size})"):
        result = train(model, DDTrackingTask(diff), train_set, val_set, tc, args.out, resume=args.resume,
                       force=args.force, device=device, model_meta=meta, progress=not args.quiet, log=log.info)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    write_training_sidecar(args.out, "train ddtracking", meta, tc, result, seed=args.seed, subjects=args.subjects,
                           stream=None if pool is None else stream.stream_summary(pool))
    last = result.history[-1] if result.history else {}
    print(f"DDTracking {args.variant}: {result.epochs_run} epochs, best validation loss {result.best_val_loss:.4g} "
          f"at epoch {result.best_epoch} (last validation angle {last.get('val_angle_deg', float('nan')):.1f} deg) "
          f"-> {args.out}")
    return 0


def _subject_windows(args: argparse.Namespace, noise: dict):
    """Training and validation windows of SUBJECT_DIRs, and their meta."""
    from ..models.ddtracking.data import StreamlineDataset, prepare_subject
    from ..training.files import subject_label

    cache = args.cache_dir or args.out.with_name(args.out.stem + ".cache")
    subjects = [prepare_subject(d, step=args.step, cache_dir=cache) for d in args.subjects]
    train_subjects, val_subjects = split_validation(subjects, args.val_subjects, args.seed)
    train_set = StreamlineDataset(train_subjects, args.samples_per_epoch, seed=args.seed, **noise)
    val_set = StreamlineDataset(val_subjects, args.val_samples, seed=args.seed + 10_000, per_epoch=False, **noise)
    return train_set, val_set, {"subjects": [subject_label(d) for d in args.subjects],
                                "val_subjects": [s.name for s in val_subjects]}


def _streamed_windows(args: argparse.Namespace, noise: dict):
    """The pool, training and validation windows of ``--stream`` subjects, and their meta."""
    from functools import partial

    from ..models.ddtracking.data import StreamlineDataset, phantom_arrays

    def dataset(n_samples: int, seed: int, validation: bool):
        fixed = {"per_epoch": False} if validation else {}
        return partial(StreamlineDataset, n_samples=n_samples, seed=seed, **fixed, **noise)

    return stream.open_datasets(args, phantom_arrays, {"step": args.step}, {}, _streamed_subject, dataset)


def _streamed_subject(seed: int, arrays: dict):
    from ..models.ddtracking.data import subject_from_arrays

    return subject_from_arrays(f"seed{seed}", arrays)
