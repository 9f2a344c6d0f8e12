"""Training: the shared trainer (AdamW, plateau LR, early stopping, checkpoints, DDP)."""

from .dataset import EpochDataset, EpochSet
from .files import load_weights, output_paths, save_weights
from .loop import TrainConfig, TrainResult, Task, train

__all__ = ["EpochDataset", "EpochSet", "TrainConfig", "TrainResult", "Task", "load_weights", "output_paths",
           "save_weights", "train"]
