"""How QCG-DTI is trained: patches of subjects (folders, or phantoms simulated on the fly) through the shared trainer.

:func:`train_qcgdti` is ``difftract train qcgdti`` as a library call (also under
``torchrun``). It lives with the model, beside the patches it draws (:mod:`.data`),
because what it holds is this model's recipe; :mod:`difftract.training` stays the
model-agnostic trainer and never imports a model.

>>> from difftract.models.qcgdti.train import QCGTrainOptions, train_qcgdti
>>> result = train_qcgdti("qcg.pt", ["sims/train1", "sims/train2"], QCGTrainOptions(epochs=2))   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np

from ...errors import ConfigError
from ...console import Console
from ...training.stream import StreamOptions, distributed_rank
from .model import BRANCH_NAMES, LOSSES, TARGETS, QCGConfig, QCGDTI, branches

log = logging.getLogger("difftract")

# streamed subjects default to the scheme of the first weights' training phantoms (a randomised
# stream draws its own), with their noise-free twin on the truth scheme: the exact reference
QCG_PHANTOM = {"snr": 20.0, "bvals": [1000.0, 2000.0, 3000.0], "ndirs": [90, 60, 60], "nb0": 2}
STREAM_SUBJECTS_PER_EPOCH = 4
SCHEMES = ("flexible", "fixed")     # the six-DWI input sets PatchDataset draws


@dataclass(frozen=True)
class QCGTrainOptions:
    """The network, its patches and the optimisation.

    Attributes
    ----------
    model : QCGConfig
        Architecture (variant, widths, least-squares input, anisotropy gain).
    scheme : str
        Six-DWI input sets: ``flexible`` (nearest a randomly rotated DSM6) or ``fixed`` (DSM6).
    patch : int, optional
        Patch edge in voxels (default: 32 on CPU, 64 on GPU).
    samples_per_epoch, val_samples : int
        Training patches per epoch, validation patches.
    val_subjects : int
        Subjects held out for validation (the last ones; with one subject, other patches of it).
    epochs, batch_size, lr, patience : int, int, float, int
        AdamW and early stopping.
    plateau_patience : int
        Epochs without a better validation loss before the learning rate drops tenfold.
    loss : str
        One of ``LOSSES``: ``mse``, ``relative``, ``anisotropic``, ``decomposed`` or ``balanced``
        (see :class:`.data.QCGTask`).
    target : str
        The reference tensors: ``all-shells`` (the fit on every volume; for a simulated subject,
        its noise-free twin's on b = 1000, 2000, 3000) or ``shell`` (the fit of the six DWIs'
        shell alone: what one shell can measure; see :mod:`.data`).
    gain_only : bool
        Train only the gain branches the ``init`` weights lack (all of them, where they lack
        none); the rest keeps its ``init`` weights. The anisotropy gain scales each tensor's
        anisotropic part (FA, and the eigenvalues with it) and keeps its trace and
        eigenvectors; the MD gain (``model.md_gain``) scales the whole tensor. Directions stay
        the ``init`` network's (up to rounding, and where the fit clips negative eigenvalues),
        and so does MD without an MD gain. From weights with a trained anisotropy gain,
        ``--md-gain --gain-only`` trains the MD gain alone and leaves FA as it was.
    init : Path, optional
        Start from these weights (same architecture, or the same without some of its gain
        branches, which then start at gain 1) instead of a random initialisation.
    seed : int
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    """

    model: QCGConfig = field(default_factory=QCGConfig)
    scheme: str = "flexible"
    patch: int | None = None
    epochs: int = 20
    samples_per_epoch: int = 200
    val_samples: int = 32
    val_subjects: int = 1
    batch_size: int = 2
    lr: float = 1e-3
    patience: int = 6
    plateau_patience: int = 3
    loss: str = "mse"
    target: str = "all-shells"
    init: Path | None = None
    gain_only: bool = False
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ConfigError(f"QCG-DTI loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.target not in TARGETS:
            raise ConfigError(f"QCG-DTI target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if self.gain_only and not (self.model.anisotropy_gain and self.init is not None):
            raise ConfigError("--gain-only trains the gain branches of --init weights: give --init W and "
                              "--anisotropy-gain")


def train_qcgdti(out: str | Path, subjects: Sequence[str | Path] = (), options: QCGTrainOptions = QCGTrainOptions(),
                 *, stream: StreamOptions | None = None, console: Console = Console(), resume: bool = False,
                 force: bool = False):
    """Train QCG-DTI on ``subjects`` (folders) or a ``stream`` of phantoms; weights to ``out``.

    Writes ``out`` (best validation), ``W.ckpt.pt``, ``W.metrics.jsonl`` and, on rank 0, the
    sidecar ``W.json``. Returns the :class:`~difftract.training.loop.TrainResult`.
    """
    import torch

    from ...device import resolve_device
    from ...io.atomic import check_outputs
    from ...io.sidecar import sidecar_path
    from ...memory import oom_guard
    from ...phantom.splits import check_training_subject
    from ...training.files import output_paths, write_training_sidecar
    from ...training.loop import TrainConfig, train
    from ...training.stream import stream_summary
    from .data import QCGTask

    out, subjects = Path(out), [Path(d) for d in subjects]
    if not resume:   # every file the run writes, before the subjects are prepared
        check_outputs([*output_paths(out), sidecar_path(out)], force)
    for d in subjects:   # before any work: a test phantom is never trained on
        check_training_subject(d)
    device = resolve_device(options.device)
    patch = options.patch or (64 if device.type == "cuda" else 32)
    config = options.model
    if patch < 8 or patch % config.multiple:
        raise ConfigError(f"--patch must be a multiple of {config.multiple} and at least 8, got {patch}")
    if bool(subjects) == (stream is not None):
        raise ConfigError("give training SUBJECT_DIRs or --stream PRESET (one of the two)")
    if stream is not None:
        pool, train_set, val_set, data_meta = _streamed_patches(out, stream, options, patch, config.multiple)
    else:
        pool, (train_set, val_set, data_meta) = None, _subject_patches(subjects, options, patch, config.multiple)
    task = QCGTask(options.loss)
    torch.manual_seed(options.seed)
    model = QCGDTI(config)
    init_meta, new_branches = {}, []
    if options.init is not None:   # a warm start: the same architecture, its trained weights
        from ...training.files import load_model
        from .model import build_model, load_without_gain

        start, start_meta = load_model(options.init, "qcgdti", "QCG-DTI", build_model)
        if start.config == config:
            model.load_state_dict(start.state_dict())
        elif _fewer_branches(start.config, config):   # the branches it lacks added, at gain 1
            new_branches = load_without_gain(model, start.state_dict())
        else:
            raise ConfigError(f"--init {options.init}: its architecture {start.config.as_dict()} differs from "
                              f"this run's {config.as_dict()}")
        init_meta = {"init": {"file": Path(options.init).name, "sha256": start_meta.get("sha256")}}
    if options.gain_only:   # the rest keeps its weights: AdamW skips parameters without gradients
        from ...training.domain import intersect_domains

        # the branches the --init weights lack; where they have them all, every branch
        trained = new_branches or branches(config)
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name.split(".")[0] in trained)
        init_meta["trained"] = " and ".join(BRANCH_NAMES[b] for b in trained) + \
            (" branches only" if len(trained) > 1 else " branch only")
        # its tensors' directions (and MD, unless the MD gain trains) are still the --init network's:
        # trusted where both were trained
        data_meta["domain"] = intersect_domains(data_meta.get("domain") or {}, start_meta.get("domain"))
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last_3d)   # ~25% faster 3D convolutions on CPU
    meta = {"model": "qcgdti", "config": config.as_dict(), "patch": patch, "scheme": options.scheme, **data_meta,
            "loss": options.loss, "normalisation": "inputs / mean b0 over the mask; outputs um^2/ms", **init_meta}
    if options.target != "all-shells":   # absent means all-shells: a run from before the option still resumes
        meta["target"] = options.target
    tc = TrainConfig(epochs=options.epochs, batch_size=options.batch_size, lr=options.lr, seed=options.seed,
                     early_stop_patience=options.patience, plateau_patience=options.plateau_patience)
    with pool if pool is not None else contextlib.nullcontext(), \
            oom_guard(f"QCG-DTI training on {device}", f"lower --batch-size (it was {options.batch_size})"):
        result = train(model, task, train_set, val_set, tc, out, resume=resume, force=force,
                       device=device, model_meta=meta, progress=not console.quiet, log=log.info)
    if distributed_rank()[0] != 0:
        return result
    write_training_sidecar(out, "train qcgdti", meta, tc, result, seed=options.seed, subjects=subjects,
                           stream=None if pool is None else stream_summary(pool))
    console.say(f"QCG-DTI {config.variant}: {result.epochs_run} epochs, best validation loss "
                f"{result.best_val_loss:.4g} at epoch {result.best_epoch} -> {out}")
    return result


def _fewer_branches(start: QCGConfig, config: QCGConfig) -> bool:
    """Whether ``start`` is ``config``'s network with fewer gain branches (which then start at gain 1)."""
    if start.anisotropy_gain:   # the anisotropy gain kept as it is: only the MD gain may be new
        return config.md_gain and not start.md_gain and start == replace(config, md_gain=False)
    return start == replace(config, anisotropy_gain=False, gain_input=start.gain_input, md_gain=False)


def _subject_patches(subjects: list[Path], options: QCGTrainOptions, patch: int, multiple: int):
    """Training and validation patches of subject folders (the last ``val_subjects`` validate), and their meta."""
    from ...io.dwi import load_subject
    from ...training.files import subject_label
    from .data import PatchDataset, prepare_subject
    from ...training.domain import subjects_domain

    if options.val_subjects < 0 or (len(subjects) > 1 and options.val_subjects >= len(subjects)):
        raise ConfigError(f"--val-subjects must leave at least one training subject, got {options.val_subjects} "
                          f"of {len(subjects)}")
    prepared, voxel_sizes = [], []
    for k, d in enumerate(subjects):
        dwi = load_subject(d)
        voxel_sizes.append(np.asarray(dwi.voxel_sizes, float))
        prepared.append(prepare_subject(d, patch=patch, multiple=multiple, seed=options.seed + k, dwi=dwi,
                                        per_shell=options.target == "shell"))
    n_val = options.val_subjects if len(prepared) > 1 else 0
    if n_val == 0:
        log.warning("no held-out subject: validation patches come from the training subjects, so early stopping "
                    "and the best epoch measure fit, not generalisation")
    train_subjects, val_subjects = prepared[: len(prepared) - n_val], prepared[len(prepared) - n_val:] or prepared
    train_set = PatchDataset(train_subjects, options.samples_per_epoch, patch, options.scheme, seed=options.seed,
                             target=options.target)
    val_set = PatchDataset(val_subjects, options.val_samples, patch, options.scheme, seed=options.seed + 10_000,
                           augment=False, per_epoch=False, target=options.target)
    return train_set, val_set, {"subjects": [subject_label(d) for d in subjects],
                                "val_subjects": [s.name for s in val_subjects],
                                "reference": "WLS on all volumes of each subject" if options.target == "all-shells"
                                else "WLS on the b0s and the six DWIs' shell of each subject",
                                "domain": subjects_domain([s.bvals for s in train_subjects], voxel_sizes[: len(train_subjects)])}


def _streamed_patches(out: Path, stream: StreamOptions, options: QCGTrainOptions, patch: int, multiple: int):
    """The pool, training and validation patches of streamed subjects, and their meta."""
    from ...training.stream import open_datasets
    from .data import PatchDataset, phantom_arrays, truth_scheme

    def dataset(n_samples: int, seed: int, validation: bool):
        fixed = {"augment": False, "per_epoch": False} if validation else {}
        return partial(PatchDataset, n_samples=n_samples, patch=patch, scheme=options.scheme, seed=seed,
                       target=options.target, **fixed)

    defaults = {**QCG_PHANTOM, "noise_free_scheme": truth_scheme()}
    settings = {"per_shell": True} if options.target == "shell" else {}   # part of the stream's cache key
    pool, train_set, val_set, meta = open_datasets(stream, out, options, phantom_arrays, settings, defaults,
                                                   STREAM_SUBJECTS_PER_EPOCH,
                                                   partial(_streamed_subject, patch=patch, multiple=multiple), dataset)
    meta["reference"] = (
        "WLS of the noise-free signal on the truth scheme (b = 1000, 2000, 3000; 60 directions each)"
        if options.target == "all-shells" else "WLS of the noise-free signal on each shell of the truth scheme "
        "(b = 1000, 2000, 3000; 60 directions each), interpolated in b to the six DWIs' shell")
    return pool, train_set, val_set, meta


def _streamed_subject(seed: int, arrays: dict, patch: int, multiple: int):
    from .data import subject_from_arrays

    return subject_from_arrays(f"seed{seed}", arrays, patch=patch, multiple=multiple, seed=seed)
