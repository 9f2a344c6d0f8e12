"""Training data without end: every epoch's subjects simulated on the fly from seeds.

Which subjects an epoch uses is a pure function of the plan (:class:`StreamPlan`), and a
subject is a pure function of its seed (:class:`~.recipe.SubjectRecipe`), so sample
``(epoch, index)`` on rank ``r`` always comes from the same subject: the seed of subject
``index mod K`` of :meth:`StreamPlan.seeds` ``(epoch)``. That is what keeps the trainer's
exact resume working when the pool has evicted a subject, or on another machine.

Fresh subjects (:func:`~difftract.phantom.splits.training_seed`) are interleaved across
ranks, so DDP ranks never share one; validation uses held-back seeds of the same stream
(:func:`~difftract.phantom.splits.validation_seed`), never test seeds.

A trainer given :class:`StreamOptions` (``difftract train --stream``) gets its pool and
datasets from :func:`open_datasets`; the model supplies its preparation and datasets.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from torch.utils.data import Dataset

from ..errors import ConfigError
from ..phantom.splits import MAX_VALIDATION_SUBJECTS, training_seed, validation_seed
from .pool import SubjectPool
from .domain import stream_domain

log = logging.getLogger("difftract")


@dataclass(frozen=True)
class StreamOptions:
    """Training subjects simulated on the fly, instead of subject folders.

    Attributes
    ----------
    preset : str
        Phantom preset of the subjects (e.g. ``random``, whose geometry is new for every seed),
        or several separated by commas, which the subjects alternate between by seed
        (e.g. ``random,brain-random``).
    phantom : mapping
        Other :class:`~difftract.phantom.PhantomConfig` settings, over the model's defaults
        (e.g. ``{"snr": 30}``).
    base : int
        Stream number: runs with another base never share subjects.
    subjects_per_epoch : int, optional
        Subjects per epoch and rank (default: the model's).
    epochs_per_subject : int
        Epochs each set of subjects serves: 1 new subjects every epoch, 0 the same throughout.
    pool_dir : Path, optional
        Subject cache folder (default: ``W.stream/`` beside the weights ``W.pt``).
    pool_size : int, optional
        Most subjects kept (default: two epochs' subjects of all ranks and the validation ones).
    pool_gb : float
        Most gigabytes kept (least recently used evicted).
    workers : int
        Processes simulating subjects beside the training; 0 simulates in the training
        process when a subject is needed.
    timeout : float
        Longest wait for one subject, seconds.
    """

    preset: str
    phantom: Mapping[str, Any] = field(default_factory=dict)
    base: int = 0
    subjects_per_epoch: int | None = None
    epochs_per_subject: int = 1
    pool_dir: Path | None = None
    pool_size: int | None = None
    pool_gb: float = 8.0
    workers: int = 1
    timeout: float = 3600.0

    @staticmethod
    def defaults() -> dict[str, Any]:
        """Each field's default (``preset`` has none)."""
        return {f.name: f.default for f in fields(StreamOptions) if f.name not in ("preset", "phantom")}


class Schedule(Protocol):
    """What :func:`open_datasets` reads of a trainer's options."""

    epochs: int
    samples_per_epoch: int
    val_samples: int
    val_subjects: int
    seed: int


@dataclass(frozen=True)
class StreamPlan:
    """Which subjects each epoch draws.

    Parameters
    ----------
    base : int
        Separates independent streams (runs that must not share subjects).
    subjects_per_epoch : int
        ``K``: subjects of one epoch, per rank.
    epochs_per_subject : int
        Epochs a set of ``K`` subjects serves before the next set; 1 (default): new
        subjects every epoch, so no geometry is seen twice (with a seed-driven geometry);
        0: the same ``K`` subjects for the whole run.
    val_subjects : int
        Held-back validation subjects (the same on every rank and epoch).
    rank, world_size : int
    """

    base: int = 0
    subjects_per_epoch: int = 8
    epochs_per_subject: int = 1
    val_subjects: int = 1
    rank: int = 0
    world_size: int = 1

    def __post_init__(self):
        if self.subjects_per_epoch < 1 or self.epochs_per_subject < 0 or not 1 <= self.val_subjects <= MAX_VALIDATION_SUBJECTS:
            raise ConfigError(f"the subject stream needs subjects per epoch >= 1, epochs per subject >= 0 and "
                              f"1..{MAX_VALIDATION_SUBJECTS} validation subjects, got {self.subjects_per_epoch}, "
                              f"{self.epochs_per_subject}, {self.val_subjects}")
        training_seed(self.base, 0, self.rank, self.world_size)   # checks base, rank and world

    def indices(self, epoch: int) -> range:
        """Stream indices (of this rank) of the subjects of ``epoch`` (1-based)."""
        block = (epoch - 1) // self.epochs_per_subject if self.epochs_per_subject else 0
        return range(block * self.subjects_per_epoch, (block + 1) * self.subjects_per_epoch)

    def seeds(self, epoch: int) -> list[int]:
        """Phantom seeds of this rank's training subjects in ``epoch``."""
        return [training_seed(self.base, k, self.rank, self.world_size) for k in self.indices(epoch)]

    def validation_seeds(self, epoch: int = 0) -> list[int]:
        """Phantom seeds of the validation subjects: the same on every rank and in every epoch."""
        return [validation_seed(self.base, j) for j in range(self.val_subjects)]

    def describe(self) -> dict:
        """JSON-like record, with how a sample maps to its subject's seed."""
        return {**{k: v for k, v in asdict(self).items() if k != "rank"},
                "sample_to_seed": "sample i of epoch e on rank r: subject i mod subjects_per_epoch of the epoch's "
                                  "seeds (metrics: train_subject_seeds), seed = training_seed(base, k, r, "
                                  "world_size) for stream index k (difftract.phantom.splits)"}


def stream_presets(text: str) -> tuple[str, ...]:
    """``"random,brain-random"`` -> ``("random", "brain-random")``; each must be a known preset."""
    from ..phantom.presets import PRESETS

    presets = tuple(p.strip() for p in str(text).split(",") if p.strip())
    unknown = [p for p in presets if p not in PRESETS]
    if not presets or unknown:
        name = unknown[0] if unknown else str(text)
        raise ConfigError(f"unknown phantom preset {name!r}; choose from {', '.join(PRESETS)} "
                          "(several separated by commas)")
    return presets


def distributed_rank() -> tuple[int, int]:
    """(rank, world size): torch.distributed's when initialised, else torchrun's environment, else (0, 1).

    The rank is the global one (``RANK``, unique across nodes), never ``LOCAL_RANK``, which
    repeats on every node: with it, rank ``r`` of every node would draw the same subjects.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


class StreamDataset(Dataset):
    """The samples of one epoch's streamed subjects; the trainer's ``set_epoch`` switches subjects.

    Parameters
    ----------
    pool : SubjectPool
    seeds : callable
        ``seeds(epoch) -> list of subject seeds`` (e.g. :meth:`StreamPlan.seeds`).
    load : callable
        ``load(seed, arrays) -> subject``: the model's subject from the pool's arrays.
    build : callable
        ``build(subjects) -> dataset``: the model's dataset over a list of subjects, whose
        sample ``i`` draws from subject ``i mod len(subjects)`` (PatchDataset,
        StreamlineDataset); it is told the epoch too.
    n_samples : int
        Samples per epoch.
    prefetch : bool
        Announce the next epoch's subjects to the pool's workers at the start of an epoch.
    last_epoch : int, optional
        No prefetch beyond it (the run's last epoch).
    """

    def __init__(self, pool: SubjectPool, seeds: Callable[[int], list[int]], load: Callable, build: Callable,
                 n_samples: int, prefetch: bool = True, last_epoch: int | None = None):
        if n_samples < 1:
            raise ConfigError(f"a streamed dataset needs at least one sample per epoch, got {n_samples}")
        self.pool, self.seeds, self.load, self.build = pool, seeds, load, build
        self.n_samples, self.prefetch, self.last_epoch = int(n_samples), prefetch, last_epoch
        self.current: list[int] = []
        self.data = None

    def set_epoch(self, epoch: int) -> None:
        seeds = self.seeds(epoch)
        ahead = self.prefetch and (self.last_epoch is None or epoch < self.last_epoch)
        upcoming = [s for s in self.seeds(epoch + 1) if s not in seeds] if ahead else []
        if seeds != self.current:
            self.pool.want(seeds + upcoming)     # in order: this epoch's, then the next one's
            self.data = self.build([self.load(s, self.pool.get(s)) for s in seeds])
            self.current = seeds
        elif upcoming:
            self.pool.want(upcoming)
        self.data.set_epoch(epoch)

    def epoch_record(self) -> dict:
        """What the metrics row records of this epoch: the seeds of its subjects, in sample order."""
        return {"subject_seeds": list(self.current)}

    def __len__(self) -> int:
        return self.n_samples

    def __getitem__(self, index: int):
        if self.data is None:
            raise ConfigError("a streamed dataset is read before its first set_epoch")
        return self.data[index]

    def __getstate__(self) -> dict:
        """DataLoader workers get the loaded subjects, not the pool (its worker process stays here)."""
        return {**self.__dict__, "pool": None}


def open_stream(stream: StreamOptions, out: Path, val_subjects: int, prepare: Callable, settings: dict,
                phantom_defaults: dict, subjects_per_epoch: int):
    """The pool and plan of a stream: ``(pool, plan, record)``; the caller closes the pool.

    ``subjects_per_epoch`` is the model's default for ``stream.subjects_per_epoch``.
    ``record`` (JSON-like) describes the stream for the weights' metadata; resuming with
    another stream is refused through it. Pool location and size are not part of it.
    """
    from .recipe import SubjectRecipe, phantom_recipe

    rank, world = distributed_rank()
    per_epoch = subjects_per_epoch if stream.subjects_per_epoch is None else stream.subjects_per_epoch
    plan = StreamPlan(base=stream.base, subjects_per_epoch=per_epoch, epochs_per_subject=stream.epochs_per_subject,
                      val_subjects=val_subjects, rank=rank, world_size=world)
    presets = stream_presets(stream.preset)
    recipe = SubjectRecipe(phantom_recipe(presets[0], {**phantom_defaults, **stream.phantom}), prepare, settings,
                           presets=presets if len(presets) > 1 else ())
    for k in range(1, len(presets)):   # every preset's settings checked here, not in a worker later
        recipe.config(k)
    if not stream.pool_gb > 0:
        raise ConfigError(f"--pool-gb must be positive, got {stream.pool_gb}")
    if stream.pool_size is not None and stream.pool_size < 1:
        raise ConfigError(f"--pool-size must be at least 1, got {stream.pool_size}")
    # every rank's worker writes to the same pool: one epoch needs each rank's subjects at once
    size = 2 * plan.subjects_per_epoch * world + plan.val_subjects if stream.pool_size is None else stream.pool_size
    if size < plan.subjects_per_epoch * world + plan.val_subjects:
        log.warning("--pool-size %d is under one epoch's subjects (all ranks) and the validation ones: "
                    "prefetched subjects may be evicted before use and simulated again", size)
    folder = stream.pool_dir or out.with_name(out.stem + ".stream")
    if stream.workers < 0:
        raise ConfigError(f"--stream-workers must be 0 or more, got {stream.workers}")
    pool = SubjectPool(recipe, folder, max_subjects=size, max_bytes=int(stream.pool_gb * 2**30),
                       workers=stream.workers, timeout=stream.timeout)
    record = {"recipe": recipe.describe(), **plan.describe()}
    return pool, plan, record


def open_datasets(stream: StreamOptions, out: Path, schedule: Schedule, prepare: Callable, settings: dict,
                  phantom_defaults: dict, subjects_per_epoch: int, load: Callable, dataset: Callable):
    """The pool, training and validation datasets of a stream, and their meta (with the stream's
    :func:`~difftract.training.domain.stream_domain`).

    ``prepare(phantom, **settings)`` makes the arrays a subject is stored as (the model's
    ``phantom_arrays``), ``load(seed, arrays)`` a model's subject from them, and
    ``dataset(n_samples, seed, validation)`` the model's dataset over a list of subjects
    (a partial): training draws new samples every epoch, validation the same ones.
    """
    pool, plan, record = open_stream(stream, Path(out), schedule.val_subjects, prepare, settings, phantom_defaults,
                                     subjects_per_epoch)
    train_set = StreamDataset(pool, plan.seeds, load, dataset(schedule.samples_per_epoch, schedule.seed, False),
                              schedule.samples_per_epoch, last_epoch=schedule.epochs)
    val_set = StreamDataset(pool, plan.validation_seeds, load,
                            dataset(schedule.val_samples, schedule.seed + 10_000, True), schedule.val_samples,
                            prefetch=False)
    domain = stream_domain(pool.recipe.phantom, pool.recipe.presets)   # what every model's weights record
    return pool, train_set, val_set, {"stream": record, "val_subjects": [f"seed{s}" for s in plan.validation_seeds()],
                                      "domain": domain}


def stream_summary(pool: SubjectPool) -> dict:
    """Sidecar facts of a finished streamed run: subjects simulated here and their mean time."""
    seconds = round(sum(pool.seconds.values()) / len(pool.seconds), 3) if pool.seconds else None
    return {"subjects_simulated": len(pool.seconds), "seconds_per_subject": seconds}
