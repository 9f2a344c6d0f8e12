"""``difftract train qcgdti``: parse the options and call :func:`difftract.models.qcgdti.train.train_qcgdti`.

``difftract train`` holds both trainers' subcommands; DDTracking's parser is in :mod:`.train_ddtracking`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from . import stream
from .common import add_training_run_arguments

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


def add_parser(sub) -> None:
    from ..models.qcgdti.model import GAIN_INPUTS, VARIANTS
    from ..models.qcgdti.train import LOSSES, SCHEMES, STREAM_SUBJECTS_PER_EPOCH, TARGETS, QCGTrainOptions

    d = QCGTrainOptions()
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
    qcg.add_argument("--variant", choices=VARIANTS, default=d.model.variant,
                     help="architecture (ablations of the paper; default: %(default)s)")
    qcg.add_argument("--widths", default=",".join(map(str, d.model.widths)),
                     help="channels per level (default: %(default)s)")
    qcg.add_argument("--no-lsq-input", action="store_true",
                     help="the paper's network exactly: the last layer does not see the six-DWI least-squares "
                          "tensor (learns orientations far slower)")
    qcg.add_argument("--anisotropy-gain", action="store_true",
                     help="a per-voxel gain on the output's anisotropic part (corrects the six-DWI FA; with --init "
                          "from weights without it, training starts where they are)")
    qcg.add_argument("--gain-input", choices=GAIN_INPUTS, default=d.model.gain_input,
                     help="what the gain branch sees: all (the head's input: features and the least-squares tensor) "
                          "invariant (features, the head's FA and MD, b) or calibration (no features: per voxel, "
                          "the FA and MD of the head's and of the least-squares tensor, b, the voxel's b0, and the "
                          "patch's b0 SNR) (default: %(default)s)")
    qcg.add_argument("--md-gain", action="store_true",
                     help="with --anisotropy-gain: a second per-voxel branch that scales each voxel's tensor (MD; "
                          "FA and directions unchanged)")
    qcg.add_argument("--gain-only", action="store_true",
                     help="with --init and --anisotropy-gain: train the gain branch alone, which changes the "
                          "anisotropy (FA), and with --md-gain MD, and keeps directions")
    qcg.add_argument("--scheme", choices=SCHEMES, default=d.scheme,
                     help="six-DWI input sets (default: %(default)s)")
    qcg.add_argument("--patch", type=int, default=None, help="patch edge in voxels (default: 32 on CPU, 64 on GPU)")
    qcg.add_argument("--epochs", type=int, default=d.epochs, help="(default: %(default)s)")
    qcg.add_argument("--samples-per-epoch", type=int, default=d.samples_per_epoch,
                     help="training patches per epoch (default: %(default)s)")
    qcg.add_argument("--val-samples", type=int, default=d.val_samples, help="validation patches (default: %(default)s)")
    qcg.add_argument("--val-subjects", type=int, default=d.val_subjects,
                     help="subjects held out for validation (default: %(default)s)")
    qcg.add_argument("--batch-size", type=int, default=d.batch_size, help="(default: %(default)s)")
    qcg.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate (default: %(default)s)")
    qcg.add_argument("--patience", type=int, default=d.patience,
                     help="early-stopping patience in epochs (default: %(default)s)")
    qcg.add_argument("--init", type=Path, metavar="W", help="start from these QCG-DTI weights (same architecture)")
    qcg.add_argument("--plateau-patience", type=int, default=d.plateau_patience,
                     help="epochs without a better validation loss before the learning rate drops tenfold "
                          "(default: %(default)s)")
    qcg.add_argument("--loss", choices=LOSSES, default=d.loss,
                     help="mse: every voxel alike; relative: each voxel's error over its true MD + 0.5 um^2/ms, "
                          "so CSF does not dominate; anisotropic: relative, times 1 + 10 FA^2 of the true tensor, so "
                          "white matter counts; decomposed: MD, FA and orientation errors as separate terms, so an "
                          "uncertain direction does not shrink FA; balanced: decomposed, every bin of the true FA "
                          "weighed alike (default: %(default)s)")
    qcg.add_argument("--target", choices=TARGETS, default=d.target,
                     help="the reference tensors: all-shells (the fit on every volume) or shell (the fit of the six "
                          "DWIs' shell alone, what one shell can measure) (default: %(default)s)")
    add_training_run_arguments(qcg, seed=d.seed, device=d.device)
    stream.add_arguments(qcg, default_subjects=STREAM_SUBJECTS_PER_EPOCH)
    qcg.set_defaults(func=cmd_train_qcgdti)
    from .train_ddtracking import add_parser as add_ddtracking

    add_ddtracking(models)


def _widths(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(w) for w in text.split(","))
    except ValueError:
        raise ConfigError(f"--widths must be comma-separated integers, got {text!r}") from None


def cmd_train_qcgdti(args: argparse.Namespace) -> int:
    from ..models.qcgdti.model import QCGConfig
    from ..models.qcgdti.train import QCGTrainOptions, train_qcgdti
    from ..pipeline import Console

    model = QCGConfig(variant=args.variant, widths=_widths(args.widths), lsq_input=not args.no_lsq_input,
                      anisotropy_gain=args.anisotropy_gain, gain_input=args.gain_input, md_gain=args.md_gain)
    options = QCGTrainOptions(model=model, scheme=args.scheme, patch=args.patch, epochs=args.epochs,
                              samples_per_epoch=args.samples_per_epoch, val_samples=args.val_samples,
                              val_subjects=args.val_subjects, batch_size=args.batch_size, lr=args.lr,
                              patience=args.patience, plateau_patience=args.plateau_patience, loss=args.loss,
                              target=args.target, init=args.init, gain_only=args.gain_only, seed=args.seed,
                              device=args.device)
    train_qcgdti(args.out, args.subjects, options, stream=stream.stream_options(args),
                 console=Console(quiet=args.quiet), resume=args.resume, force=args.force)
    return 0
