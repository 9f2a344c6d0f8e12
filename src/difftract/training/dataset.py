"""Datasets whose samples are a pure function of (seed, epoch, index): what exact resume needs.

:class:`EpochSet` is what the trainer asks of its training and validation sets;
:class:`EpochDataset` is the usual base.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
from torch.utils.data import Dataset


@runtime_checkable
class EpochSet(Protocol):
    """A training or validation set as the trainer uses it."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...

    def set_epoch(self, epoch: int) -> None:
        """Called before each epoch (samples may depend on it)."""
        ...

    def epoch_record(self) -> dict:
        """JSON-like facts about the epoch for its metrics row (e.g. streamed subjects' seeds), or ``{}``."""
        ...


class EpochDataset(Dataset):
    """``n_samples`` random samples per epoch; :meth:`rng` gives sample ``index``'s generator.

    The trainer calls :meth:`set_epoch` before each epoch. With ``per_epoch=False`` (a
    validation set) every epoch sees the same samples.
    """

    def __init__(self, n_samples: int, seed: int = 0, per_epoch: bool = True):
        self.n_samples, self.seed, self.per_epoch, self.epoch = int(n_samples), int(seed), per_epoch, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch if self.per_epoch else 0

    def epoch_record(self) -> dict:
        """Nothing to record: the samples follow from (seed, epoch, index)."""
        return {}

    def __len__(self) -> int:
        return self.n_samples

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])
