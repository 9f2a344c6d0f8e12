"""A toy regression task for the trainer tests; run as a script it trains it (under torchrun).

Usage: python -m torch.distributed.run --standalone --nproc_per_node 2 ddp_job.py OUTDIR
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

DIM = 4


class NoisyLinear(Dataset):
    """``y = x @ w + noise``; each sample is a pure function of (seed, epoch, index).

    ``per_epoch=False`` keeps the samples fixed across epochs (a stable validation set);
    ``pure_noise=True`` makes the targets independent of ``x``.
    """

    def __init__(self, n: int, seed: int, noise: float = 0.1, per_epoch: bool = True, pure_noise: bool = False):
        self.n, self.seed, self.noise, self.per_epoch, self.pure_noise = n, seed, noise, per_epoch, pure_noise
        self.w = torch.randn(DIM, 1, generator=torch.Generator().manual_seed(1234))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_record(self) -> dict:
        return {}

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        epoch = self.epoch if self.per_epoch else 0
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 1_000_003 + i)
        x = torch.randn(DIM, generator=g)
        y = torch.randn(1, generator=g) if self.pure_noise else x @ self.w + self.noise * torch.randn(1, generator=g)
        return x, y


class MSETask:
    """Mean squared error; training inputs get a little jitter from the trainer's generator."""

    collate = staticmethod(default_collate)

    def loss(self, model, batch, generator):
        x, y = batch
        if model.training:
            x = x + 0.01 * torch.randn(x.shape, generator=generator, device=x.device)
        pred = model(x)
        return nn.functional.mse_loss(pred, y), {"mae": (pred - y).abs().mean().item()}


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(DIM, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 1))


def main(outdir: str, interrupted: bool = False) -> None:
    """Train 2 epochs into OUTDIR/W.pt, or with ``interrupted`` stop after epoch 1 and resume.

    The interrupted run initialises the process group itself (torch cannot re-initialise
    the default group in one torchrun process), which also covers that path of ``train``.
    """
    import torch.distributed as dist

    from difftract.training import TrainConfig, train

    rank = int(os.environ.get("RANK", "0"))
    if interrupted:
        dist.init_process_group("gloo")

    def run(**kwargs):
        model = make_model()
        if rank == 0 and not interrupted:
            torch.save(model.state_dict(), Path(outdir) / "init.pt")
        result = train(model, MSETask(), NoisyLinear(64, seed=1), NoisyLinear(20, seed=2, per_epoch=False),
                       TrainConfig(epochs=2, batch_size=8, lr=3e-3, seed=0), Path(outdir) / "W.pt",
                       progress=False, log=print, **kwargs)
        return model, result

    if interrupted:
        run(stop_after_epoch=1)
        model, result = run(resume=True)
        dist.destroy_process_group()
    else:
        model, result = run()
    torch.save(model.state_dict(), Path(outdir) / f"final_rank{rank}.pt")  # every rank: replicas must agree
    print(f"rank {rank}: epochs {result.epochs_run}, best val {result.best_val_loss:.4g}")


if __name__ == "__main__":
    main(sys.argv[1], interrupted=sys.argv[2:] == ["interrupted"])
