"""Training data without end: every epoch's subjects simulated on the fly from seeds.

Which subjects an epoch uses is a pure function of the plan (:class:`StreamPlan`), and a
subject is a pure function of its seed (:class:`~.recipe.SubjectRecipe`), so sample
``(epoch, index)`` on rank ``r`` always comes from the same subject: the seed of subject
``index mod K`` of :meth:`StreamPlan.seeds` ``(epoch)``. That is what keeps the trainer's
exact resume working when the pool has evicted a subject, or on another machine.

Fresh subjects (:func:`~difftract.phantom.splits.training_seed`) are interleaved across
ranks, so DDP ranks never share one; validation uses held-back seeds of the same stream
(:func:`~difftract.phantom.splits.validation_seed`), never test seeds.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass

from torch.utils.data import Dataset

from ..errors import ConfigError
from ..phantom.splits import MAX_VALIDATION_SUBJECTS, training_seed, validation_seed
from .pool import SubjectPool


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
