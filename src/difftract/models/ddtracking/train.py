"""How DDTracking is trained: windows of reference streamlines (subject folders, or phantoms simulated on the fly).

:func:`train_ddtracking` is ``difftract train ddtracking`` as a library call (also under
``torchrun``). It lives with the model, beside the samples it draws (:mod:`.data`),
because what it holds is this model's recipe; :mod:`difftract.training` stays the
model-agnostic trainer and never imports a model.

>>> from difftract.models.ddtracking.train import DDTrackingTrainOptions, train_ddtracking
>>> options = DDTrackingTrainOptions(epochs=2)
>>> result = train_ddtracking("ddt.pt", ["sims/train1", "sims/train2"], options)   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from ...errors import ConfigError
from ...console import Console
from ...training.stream import StreamOptions, distributed_rank
from .diffusion import DiffusionConfig
from .model import DDTracking, DDTrackingConfig

log = logging.getLogger("difftract")

STREAM_SUBJECTS_PER_EPOCH = 8


@dataclass(frozen=True)
class DDTrackingTrainOptions:
    """The network, its training samples and the optimisation.

    Attributes
    ----------
    model : DDTrackingConfig
        Architecture (defaults: the paper's).
    diffusion : DiffusionConfig
        Smallest diffusion time and the clip of the loss weights.
    step : float
        Tracking step the streamlines are resampled to, voxels.
    window, jitter, jitter_corr, seed_angle : int, float, float, float
        Most points per training sequence; offset of the input points from the streamline
        (voxels) and the correlation of consecutive offsets; error of the first previous
        direction (degrees).
    augment : bool
        Turn each training sample by one of the 48 symmetries of the voxel grid, drawn
        uniformly (:mod:`.augment`; exact for the input, never applied to validation).
    equivariance : float
        Weight of the equivariance penalty (:mod:`.consistency`; generative variants, with
        ``augment``): each batch also runs turned by a random grid symmetry. 0: none. The
        validation loss then includes the penalty.
    init : str or Path, optional
        Start from these weights (a file, or a shipped model's name: ``full``, ``fast``) of
        the same architecture, instead of a random initialisation.
    samples_per_epoch, val_samples : int
    val_subjects : int
        Subjects held out (the last ones; with one subject, 10% of its streamlines).
    cache_dir : Path, optional
        Feature cache of subject folders (default: ``W.cache/`` beside the weights).
    epochs, batch_size, lr, weight_decay, patience : int, int, float, float, int
        AdamW and early stopping.
    seed : int
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    """

    model: DDTrackingConfig = field(default_factory=DDTrackingConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    step: float = 1.0
    window: int = 64
    jitter: float = 0.3
    jitter_corr: float = 0.7
    seed_angle: float = 15.0
    augment: bool = False
    equivariance: float = 0.0
    init: str | Path | None = None
    samples_per_epoch: int = 2000
    val_samples: int = 256
    val_subjects: int = 1
    cache_dir: Path | None = None
    epochs: int = 50
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.01
    patience: int = 8
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        if self.equivariance < 0 or (self.equivariance > 0 and not self.model.generative):
            raise ConfigError(f"--equivariance must be >= 0, and > 0 only for a generative variant (got "
                              f"{self.equivariance} for {self.model.variant})")
        if self.equivariance > 0 and not self.augment:   # the symmetry holds for the data only when augmented
            raise ConfigError("--equivariance needs --augment: without it the training windows are not "
                              "symmetric under the grid's turns, and the penalty would teach a symmetry the data lacks")

    @property
    def noise(self) -> dict:
        """How the training inputs stray from the streamlines (the datasets' keywords, recorded in the weights)."""
        return {"window": self.window, "jitter": self.jitter, "jitter_corr": self.jitter_corr,
                "seed_angle": self.seed_angle}


def train_ddtracking(out: str | Path, subjects: Sequence[str | Path] = (),
                     options: DDTrackingTrainOptions = DDTrackingTrainOptions(), *,
                     stream: StreamOptions | None = None, console: Console = Console(), resume: bool = False,
                     force: bool = False):
    """Train DDTracking on ``subjects`` (folders with a reference tractogram) or a ``stream`` of phantoms.

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
    from .data import INPUT_DESCRIPTIONS, DDTrackingTask

    out, subjects = Path(out), [Path(d) for d in subjects]
    if not resume:
        check_outputs([*output_paths(out), sidecar_path(out)], force)
    for d in subjects:   # before any work: a test phantom is never trained on
        check_training_subject(d)
    if not options.step > 0:
        raise ConfigError(f"--step must be positive (voxels), got {options.step}")
    config, diff = options.model, options.diffusion
    tc = TrainConfig(epochs=options.epochs, batch_size=options.batch_size, lr=options.lr,
                     weight_decay=options.weight_decay, seed=options.seed, early_stop_patience=options.patience)
    device = resolve_device(options.device)
    if bool(subjects) == (stream is not None):
        raise ConfigError("give training SUBJECT_DIRs or --stream PRESET (one of the two)")
    if stream is not None and options.cache_dir is not None:
        raise ConfigError("--cache-dir is for SUBJECT_DIRs; streamed subjects are cached in --pool-dir")
    if stream is not None:
        pool, train_set, val_set, data_meta = _streamed_windows(out, stream, options)
    else:
        pool, (train_set, val_set, data_meta) = None, _subject_windows(out, subjects, options)
    torch.manual_seed(options.seed)
    model = DDTracking(config)
    init_meta = {} if options.init is None else {"init": _load_init(model, options.init)}
    meta = {"model": "ddtracking", "config": config.as_dict(), "diffusion": dataclasses.asdict(diff),
            "step_voxels": options.step, **options.noise, "augment": "grid48" if options.augment else None,
            "input": INPUT_DESCRIPTIONS[config.input], **init_meta, **data_meta}
    if options.equivariance > 0:   # only then: checkpoints written before the option still resume
        meta["equivariance"] = options.equivariance
    with pool if pool is not None else contextlib.nullcontext(), \
            oom_guard(f"DDTracking training on {device}", f"lower --batch-size (it was {options.batch_size})"):
        result = train(model, DDTrackingTask(diff, options.equivariance), train_set, val_set, tc, out, resume=resume,
                       force=force, device=device, model_meta=meta, progress=not console.quiet, log=log.info)
    if distributed_rank()[0] != 0:
        return result
    write_training_sidecar(out, "train ddtracking", meta, tc, result, seed=options.seed, subjects=subjects,
                           stream=None if pool is None else stream_summary(pool))
    last = result.history[-1] if result.history else {}
    console.say(f"DDTracking {config.variant}: {result.epochs_run} epochs, best validation loss "
                f"{result.best_val_loss:.4g} at epoch {result.best_epoch} (last validation angle "
                f"{last.get('val_angle_deg', float('nan')):.1f} deg) -> {out}")
    return result


def _load_init(model: DDTracking, init: str | Path) -> dict:
    """Load ``init`` (a weights file or a shipped model's name) into ``model``; what the sidecar records."""
    from .defaults import SHIPPED_MODELS
    from .getter import load_named

    start, meta = load_named(init)
    if start.config != model.config:
        raise ConfigError(f"--init {init}: its architecture {start.config.as_dict()} differs from this run's "
                          f"{model.config.as_dict()} (give the same architecture options)")
    model.load_state_dict(start.state_dict())
    return {"file": str(init) if str(init) in SHIPPED_MODELS else Path(init).name, "sha256": meta.get("sha256")}


def split_validation(subjects: list, n_val: int, seed: int) -> tuple[list, list]:
    """Hold out the last ``n_val`` subjects; with one subject, 10% of its streamlines (at least one)."""
    from .data import DDSubject

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


def _subject_windows(out: Path, subjects: list[Path], options: DDTrackingTrainOptions):
    """Training and validation windows of subject folders, and their meta."""
    from ...training.files import subject_label
    from .data import StreamlineDataset, prepare_subject
    from .domain import training_domain

    cache = options.cache_dir or out.with_name(out.stem + ".cache")
    prepared = [prepare_subject(d, step=options.step, cache_dir=cache, input=options.model.input) for d in subjects]
    train_subjects, val_subjects = split_validation(prepared, options.val_subjects, options.seed)
    train_set = StreamlineDataset(train_subjects, options.samples_per_epoch, seed=options.seed, augment=options.augment,
                                  **options.noise)
    val_set = StreamlineDataset(val_subjects, options.val_samples, seed=options.seed + 10_000, per_epoch=False,
                                **options.noise)
    trained = subjects[: len(train_subjects)]   # split_validation keeps the order: the first ones train
    return train_set, val_set, {"subjects": [subject_label(d) for d in subjects],
                                "val_subjects": [s.name for s in val_subjects],
                                "domain": training_domain(trained, options.model.input)}


def _streamed_windows(out: Path, stream: StreamOptions, options: DDTrackingTrainOptions):
    """The pool, training and validation windows of streamed subjects, and their meta."""
    from ...training.stream import open_datasets
    from .data import StreamlineDataset, input_key, phantom_arrays

    def dataset(n_samples: int, seed: int, validation: bool):
        fixed = {"per_epoch": False} if validation else {"augment": options.augment}
        return partial(StreamlineDataset, n_samples=n_samples, seed=seed, **fixed, **options.noise)

    settings = {"step": options.step, **input_key(options.model.input)}
    return open_datasets(stream, out, options, phantom_arrays, settings, {},
                         STREAM_SUBJECTS_PER_EPOCH, _streamed_subject, dataset)


def _streamed_subject(seed: int, arrays: dict):
    from .data import subject_from_arrays

    return subject_from_arrays(f"seed{seed}", arrays)
