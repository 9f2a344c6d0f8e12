"""Datasets whose samples are a pure function of (seed, epoch, index): what exact resume needs."""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset


class EpochDataset(Dataset):
    """``n_samples`` random samples per epoch; :meth:`rng` gives sample ``index``'s generator.

    The trainer calls :meth:`set_epoch` before each epoch. With ``per_epoch=False`` (a
    validation set) every epoch sees the same samples.
    """

    def __init__(self, n_samples: int, seed: int = 0, per_epoch: bool = True):
        self.n_samples, self.seed, self.per_epoch, self.epoch = int(n_samples), int(seed), per_epoch, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch if self.per_epoch else 0

    def __len__(self) -> int:
        return self.n_samples

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])
