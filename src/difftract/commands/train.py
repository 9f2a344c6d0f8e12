"""``difftract train qcgdti``: train a model on subject directories (also under ``torchrun``)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from pathlib import Path

from ..errors import ConfigError
from . import stream

log = logging.getLogger("difftract")

EPILOG_QCG = """\
Each SUBJECT_DIR holds dwi.nii.gz, dwi.bval, dwi.bvec and mask.nii.gz, with many directions
(e.g. 90 at b=1000 and 60 at b=2000 and 3000, as `difftract simulate --bvals 1000,2000,3000
--ndirs 90,60,60` writes). The reference tensor is the WLS fit on all volumes; inputs are one
b0 and six DWIs nearest to a randomly rotated DSM6 set (flexible) or to DSM6 itself (fixed).
The last --val-subjects subjects are held out for validation (with one subject, other patches
of it are).

outputs:
  W.pt               best-validation weights (load with torch.load(..., weights_only=True))
  W.ckpt.pt          checkpoint after every epoch (model, optimizer, scheduler, RNG states); --resume
  W.metrics.jsonl    one line of losses and learning rate per epoch
  W.json             provenance sidecar

examples:
  difftract train qcgdti sims/train* --out qcg.pt --epochs 20
  torchrun --nproc_per_node 2 -m difftract train qcgdti sims/train* --out qcg.pt
  difftract train qcgdti --stream random --subjects-per-epoch 4 --out qcg.pt --phantom snr=30
"""
# streamed QCG-DTI subjects default to the scheme of the shipped weights' training phantoms
QCG_PHANTOM = {"snr": 20.0, "bvals": [1000.0, 2000.0, 3000.0], "ndirs": [90, 60, 60], "nb0": 2}


def add_parser(sub) -> None:
    train = sub.add_parser("train", help="train a learned model (QCG-DTI, DDTracking) on subject directories",
                           description="Train a model with the shared trainer: AdamW, plateau learning-rate "
                                       "schedule, early stopping, checkpoints with exact --resume, DDP under torchrun.")
    models = train.add_subparsers(dest="model", metavar="MODEL", required=True)
    qcg = models.add_parser("qcgdti", help="QCG-DTI: tensors from one b0 and six DWIs of any scheme",
                            description="Train QCG-DTI on patches of subjects with many directions.",
                            epilog=EPILOG_QCG + "\n" + stream.EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    qcg.add_argument("subjects", type=Path, nargs="*", metavar="SUBJECT_DIR", help="training subject directories")
    qcg.add_argument("--out", type=Path, required=True, metavar="W", help="output weights (.pt)")
    qcg.add_argument("--variant", choices=("full", "no_qcf", "concat", "resnet"), default="full",
                     help="architecture (ablations of the paper; default: %(default)s)")
    qcg.add_argument("--widths", default="8,16,32", help="channels per level (default: %(default)s)")
    qcg.add_argument("--no-lsq-input", action="store_true",
                     help="the paper's network exactly: the last layer does not see the six-DWI least-squares "
                          "tensor (learns orientations far slower)")
    qcg.add_argument("--scheme", choices=("flexible", "fixed"), default="flexible",
                     help="six-DWI input sets (default: %(default)s)")
    qcg.add_argument("--patch", type=int, default=None, help="patch edge in voxels (default: 32 on CPU, 64 on GPU)")
    qcg.add_argument("--epochs", type=int, default=20, help="(default: %(default)s)")
    qcg.add_argument("--samples-per-epoch", type=int, default=200, help="training patches per epoch (default: %(default)s)")
    qcg.add_argument("--val-samples", type=int, default=32, help="validation patches (default: %(default)s)")
    qcg.add_argument("--val-subjects", type=int, default=1, help="subjects held out for validation (default: %(default)s)")
    qcg.add_argument("--batch-size", type=int, default=2, help="(default: %(default)s)")
    qcg.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default: %(default)s)")
    qcg.add_argument("--patience", type=int, default=6, help="early-stopping patience in epochs (default: %(default)s)")
    qcg.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    qcg.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    qcg.add_argument("--resume", action="store_true", help="continue from W.ckpt.pt")
    qcg.add_argument("--force", action="store_true", help="overwrite existing outputs")
    stream.add_arguments(qcg, default_subjects=4)
    qcg.set_defaults(func=cmd_train_qcgdti)
    from .train_ddtracking import add_parser as add_ddtracking

    add_ddtracking(models)


def _widths(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(w) for w in text.split(","))
    except ValueError:
        raise ConfigError(f"--widths must be comma-separated integers, got {text!r}") from None


def cmd_train_qcgdti(args: argparse.Namespace) -> int:
    import torch

    from ..device import resolve_device
    from ..io.atomic import check_outputs
    from ..io.sidecar import sidecar_path
    from ..memory import oom_guard
    from ..models.qcgdti.data import QCGTask
    from ..models.qcgdti.model import QCGConfig, QCGDTI
    from ..phantom.splits import check_training_subject
    from ..training.files import output_paths, write_training_sidecar
    from ..training.loop import TrainConfig, train

    if not args.resume:   # every file the run writes, before the subjects are prepared
        check_outputs([*output_paths(args.out), sidecar_path(args.out)], args.force)
    for d in args.subjects:   # before any work: a test phantom is never trained on
        check_training_subject(d)
    device = resolve_device(args.device)
    patch = args.patch or (64 if device.type == "cuda" else 32)
    config = QCGConfig(variant=args.variant, widths=_widths(args.widths), lsq_input=not args.no_lsq_input)
    if patch < 8 or patch % config.multiple:
        raise ConfigError(f"--patch must be a multiple of {config.multiple} and at least 8, got {patch}")
    stream.check_sources(args)
    if args.stream:
        pool, train_set, val_set, data_meta = _streamed_patches(args, patch, config.multiple)
    else:
        pool, (train_set, val_set, data_meta) = None, _subject_patches(args, patch, config.multiple)
    torch.manual_seed(args.seed)
    model = QCGDTI(config)
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last_3d)   # ~25% faster 3D convolutions on CPU
    meta = {"model": "qcgdti", "config": config.as_dict(), "patch": patch, "scheme": args.scheme, **data_meta,
            "normalisation": "inputs / mean b0 over the mask; outputs um^2/ms"}
    tc = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                     early_stop_patience=args.patience)
    with pool if pool is not None else contextlib.nullcontext(), \
            oom_guard(f"QCG-DTI training on {device}", f"lower --batch-size (it was {args.batch_size})"):
        result = train(model, QCGTask(), train_set, val_set, tc, args.out, resume=args.resume, force=args.force,
                       device=device, model_meta=meta, progress=not args.quiet, log=log.info)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    write_training_sidecar(args.out, "train qcgdti", meta, tc, result, seed=args.seed, subjects=args.subjects,
                           stream=None if pool is None else stream.stream_summary(pool))
    print(f"QCG-DTI {args.variant}: {result.epochs_run} epochs, best validation loss {result.best_val_loss:.4g} "
          f"at epoch {result.best_epoch} -> {args.out}")
    return 0


def _subject_patches(args: argparse.Namespace, patch: int, multiple: int):
    """Training and validation patches of SUBJECT_DIRs (the last --val-subjects validate), and their meta."""
    from ..models.qcgdti.data import PatchDataset, prepare_subject
    from ..training.files import subject_label

    if args.val_subjects < 0 or (len(args.subjects) > 1 and args.val_subjects >= len(args.subjects)):
        raise ConfigError(f"--val-subjects must leave at least one training subject, got {args.val_subjects} "
                          f"of {len(args.subjects)}")
    subjects = [prepare_subject(d, patch=patch, multiple=multiple, seed=args.seed + k)
                for k, d in enumerate(args.subjects)]
    n_val = args.val_subjects if len(subjects) > 1 else 0
    if n_val == 0:
        log.warning("no held-out subject: validation patches come from the training subjects, so early stopping "
                    "and the best epoch measure fit, not generalisation")
    train_subjects, val_subjects = subjects[: len(subjects) - n_val], subjects[len(subjects) - n_val:] or subjects
    train_set = PatchDataset(train_subjects, args.samples_per_epoch, patch, args.scheme, seed=args.seed)
    val_set = PatchDataset(val_subjects, args.val_samples, patch, args.scheme, seed=args.seed + 10_000,
                           augment=False, per_epoch=False)
    return train_set, val_set, {"subjects": [subject_label(d) for d in args.subjects],
                                "val_subjects": [s.name for s in val_subjects]}


def _streamed_patches(args: argparse.Namespace, patch: int, multiple: int):
    """The pool, training and validation patches of ``--stream`` subjects, and their meta."""
    from functools import partial

    from ..models.qcgdti.data import PatchDataset, phantom_arrays

    def dataset(n_samples: int, seed: int, validation: bool):
        fixed = {"augment": False, "per_epoch": False} if validation else {}
        return partial(PatchDataset, n_samples=n_samples, patch=patch, scheme=args.scheme, seed=seed, **fixed)

    return stream.open_datasets(args, phantom_arrays, {}, QCG_PHANTOM,
                                partial(_streamed_subject, patch=patch, multiple=multiple), dataset)


def _streamed_subject(seed: int, arrays: dict, patch: int, multiple: int):
    from ..models.qcgdti.data import subject_from_arrays

    return subject_from_arrays(f"seed{seed}", arrays, patch=patch, multiple=multiple, seed=seed)
