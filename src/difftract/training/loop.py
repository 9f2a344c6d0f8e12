"""The one trainer shared by every learned model (tensor U-Net, diffusion tracking policy).

A model family plugs in through :class:`Task` (its loss). The trainer owns the rest:
AdamW, ReduceLROnPlateau and early stopping on the validation loss, gradient clipping,
mixed precision on CUDA, a checkpoint after every epoch with exact resume, per-epoch
metrics, and DDP under ``torchrun``.

Files, written atomically and only by rank 0, for ``out = W.pt``:

- ``W.pt``            best-validation weights (:func:`save_weights` / :func:`load_weights`);
- ``W.ckpt.pt``       everything needed to resume, rewritten after every epoch;
- ``W.metrics.jsonl`` one JSON line per epoch.

Randomness: global RNGs are seeded from ``config.seed`` (and the rank); shuffling uses a
generator seeded from (seed, epoch); datasets (:class:`~.dataset.EpochSet`) are told the
epoch with ``set_epoch``, so samples can be a pure function of (seed, epoch, index), and
their ``epoch_record()`` (a JSON-like dict, e.g. the seeds of streamed subjects; usually
empty) joins the epoch's metrics row, keys prefixed ``train_``/``val_``; under DDP each
value is the list of every rank's. With the RNG states saved in the checkpoint, a run interrupted and resumed on
CPU ends with bit-identical weights.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
from tqdm import tqdm

from ..device import resolve_device
from ..errors import ConfigError, InputError
from ..io.atomic import atomic_file, check_outputs
from .dataset import EpochSet
from .files import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, cpu_state, load_checkpoint, output_paths, save_weights
from .rng import derive_seed, rng_state, seed_globals, set_rng_state

_SHUFFLE, _LOSS, _VAL, _GLOBAL = 1, 2, 3, 4  # streams of derived seeds
# metadata derived from the rest (the training data's domain, from its subjects or stream):
# not compared on --resume, so a checkpoint written before it was recorded continues
DERIVED_META = ("domain",)


@dataclass
class TrainConfig:
    """Optimisation settings; every field but ``epochs`` must match to resume a run."""

    epochs: int = 50
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.01           # AdamW
    plateau_factor: float = 0.1          # ReduceLROnPlateau on the validation loss
    plateau_patience: int = 3
    min_lr: float = 1e-7
    early_stop_patience: int = 8         # epochs without val improvement; 0 disables
    grad_clip: float = 1.0               # max grad norm; 0 disables
    amp: bool = True                     # mixed precision, used only on CUDA
    seed: int = 0
    max_steps_per_epoch: int | None = None  # cap on optimizer steps per epoch
    num_workers: int = 0

    def __post_init__(self):
        positive = ("epochs", "batch_size") + (("max_steps_per_epoch",) if self.max_steps_per_epoch is not None else ())
        bad = [f"{k} >= 1" for k in positive if getattr(self, k) < 1]
        bad += [f"{k} >= 0" for k in ("lr", "weight_decay", "plateau_patience", "min_lr", "early_stop_patience",
                                      "grad_clip", "seed", "num_workers") if getattr(self, k) < 0]
        bad += [] if 0 < self.plateau_factor < 1 else ["0 < plateau_factor < 1"]
        if bad:
            raise ConfigError(f"invalid training configuration: need {', '.join(bad)}")


class Task(Protocol):
    """What the trainer needs from a model family.

    Batches (made by :meth:`collate`) reach :meth:`loss` with their tensors already on the
    model's device.
    """

    def collate(self, samples: list) -> Any:
        """A batch from a list of samples (``staticmethod(default_collate)`` for torch's default)."""
        ...

    def loss(self, model: nn.Module, batch: Any, generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        """Scalar loss (mean over the batch) and named float metrics for logging.

        ``generator`` is a torch Generator on the model's device for randomness inside the
        loss (e.g. diffusion time and noise). In training ``model`` may be DDP-wrapped.
        """
        ...


@dataclass
class TrainResult:
    """Summary of a run; ``history`` holds the metrics rows of every epoch so far."""

    epochs_run: int
    best_epoch: int
    best_val_loss: float
    history: list[dict]
    stopped_early: bool


def train(model: nn.Module, task: Task, train_set: EpochSet, val_set: EpochSet, config: TrainConfig,
          out: str | Path, *, resume: bool = False, force: bool = False, device: str | torch.device = "auto",
          model_meta: dict | None = None, progress: bool = True, log: Callable[[str], None] | None = None,
          stop_after_epoch: int | None = None) -> TrainResult:
    """Train ``model`` on ``task`` and write the best-validation weights to ``out``.

    Parameters
    ----------
    resume : bool
        Continue from ``<out stem>.ckpt.pt``; every config field but ``epochs`` must match.
    force : bool
        Overwrite existing outputs of a fresh run (weights, checkpoint, metrics).
    device : str or torch.device
        ``auto|cpu|cuda|cuda:N``; under torchrun with CUDA each rank uses ``cuda:LOCAL_RANK``.
    model_meta : dict, optional
        JSON-like description stored in the weights file (e.g. architecture arguments).
    log : callable, optional
        Receives one summary line per epoch (rank 0 only).
    stop_after_epoch : int, optional
        For tests: return after this epoch as if killed (checkpoint and metrics written,
        weights file not), so that ``resume=True`` can continue.

    Returns
    -------
    TrainResult
        On return ``model`` holds the best-validation weights (unless interrupted).
    """
    for name, dataset in (("training", train_set), ("validation", val_set)):
        if not isinstance(dataset, EpochSet):
            raise ConfigError(f"the {name} set ({type(dataset).__name__}) needs set_epoch and epoch_record: "
                              "derive it from difftract.training.dataset.EpochDataset")
    if len(train_set) == 0 or len(val_set) == 0:
        raise ConfigError("training needs a non-empty training set and a non-empty validation set")
    try:
        json.dumps(model_meta)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model_meta must be JSON-like (str, numbers, lists, dicts): {e}") from None
    out, ckpt_path, metrics_path = output_paths(out)
    if resume:
        ckpt = load_checkpoint(ckpt_path, asdict(config))
        saved_meta = ckpt.get("meta")
        now = json.loads(json.dumps(model_meta or {}))
        keys = [] if saved_meta is None else sorted(
            k for k in set(saved_meta) | set(now) if k not in DERIVED_META and saved_meta.get(k) != now.get(k))
        if keys:
            raise ConfigError(f"{ckpt_path}: cannot resume with a different model or data setup "
                              f"(changed: {', '.join(keys)})")
    else:
        ckpt = None
        check_outputs([out, ckpt_path, metrics_path], force)
    device, rank, world, created = _setup_distributed(device)
    try:
        trainer = _Trainer(model, task, train_set, val_set, config, device, rank, world)
        trainer.meta = json.loads(json.dumps(model_meta or {}))
        if ckpt is not None:
            trainer.restore(ckpt, ckpt_path)
        trainer.wrap()
        p, interrupted = trainer.progress, False
        while not p.stopped_early and p.epoch < config.epochs and not interrupted:
            row = trainer.epoch(p.epoch + 1, show=progress and rank == 0)
            trainer.save_checkpoint(ckpt_path)
            if rank == 0:
                with atomic_file(metrics_path, force=True) as tmp:
                    tmp.write_text("".join(json.dumps(r) + "\n" for r in p.history))
                if log is not None:
                    log(f"epoch {p.epoch}/{config.epochs}  train {row['train_loss']:.4g}  val {row['val_loss']:.4g}"
                        f"  lr {row['lr']:.3g}  {row['seconds']:.1f}s" + ("  best" if p.best_epoch == p.epoch else "")
                        + ("  early stop" if p.stopped_early else ""))
            interrupted = stop_after_epoch is not None and p.epoch >= stop_after_epoch and not p.stopped_early
        if not interrupted:  # an interrupted run (tests) leaves no weights file, as if killed
            model.load_state_dict(p.best_state)
            if rank == 0:
                info = {"config": asdict(config), "best_epoch": p.best_epoch, "best_val_loss": p.best_val_loss,
                        "epochs_run": p.epoch}
                save_weights(out, p.best_state, model_meta, info, force=True)
        if world > 1:
            dist.barrier()  # rank 0's files are complete when any rank returns
        return trainer.result()
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


@dataclass
class _Progress:
    """Where a run stands after ``epoch`` epochs; saved whole in the checkpoint."""

    epoch: int = 0
    best_val_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False
    history: list = field(default_factory=list)
    best_state: dict | None = None


class _Trainer:
    """One run: the model (and its DDP wrapper), the optimisation state, the progress."""

    def __init__(self, model, task, train_set, val_set, config: TrainConfig, device, rank: int, world: int):
        self.model, self.net, self.task, self.config = model.to(device), model, task, config
        self.train_set, self.val_set, self.device, self.rank, self.world = train_set, val_set, device, rank, world
        self.comm = device if device.type == "cuda" else torch.device("cpu")  # NCCL needs CUDA, gloo takes CPU
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=config.plateau_factor, patience=config.plateau_patience,
            min_lr=config.min_lr)
        self.amp_dtype, self.scaler = None, None
        if config.amp and device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(derive_seed(config.seed, _LOSS, rank))
        self.progress = _Progress()
        self.meta: dict = {}           # model_meta, stored in the checkpoint
        seed_globals(derive_seed(config.seed, _GLOBAL, rank))

    def restore(self, ckpt: dict, path: Path) -> None:
        """Load a checkpoint's model, optimisation, progress and RNG states."""
        try:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise InputError(path, f"checkpoint does not fit this model: {e}") from None
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt["scaler"]:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.progress = _Progress(**ckpt["progress"])
        if len(ckpt["rng"]) == self.world:
            set_rng_state(ckpt["rng"][self.rank], self.generator)
        else:  # another world size splits the data differently anyway: reseed deterministically
            seed_globals(derive_seed(self.config.seed, _GLOBAL, self.rank, self.progress.epoch))
            self.generator.manual_seed(derive_seed(self.config.seed, _LOSS, self.rank, self.progress.epoch))

    def wrap(self) -> None:
        """Wrap the model in DDP (after restoring: DDP broadcasts rank 0's weights)."""
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)

    def epoch(self, epoch: int, show: bool) -> dict:
        """Train and validate one epoch, step the schedule and early stopping; return its metrics row."""
        config, p, t0 = self.config, self.progress, time.perf_counter()
        records = {}
        for prefix, dataset in (("train", self.train_set), ("val", self.val_set)):
            dataset.set_epoch(epoch)
            record = dataset.epoch_record()
            if record:   # e.g. the seeds of streamed subjects (a dataset type records always or never)
                ranks = _gather(record, self.world)
                records.update({f"{prefix}_{k}": ranks[0][k] if self.world == 1 else [r[k] for r in ranks]
                                for k in ranks[0]})
        if self.world > 1:
            sampler = DistributedSampler(self.train_set, self.world, self.rank, shuffle=True, seed=config.seed)
            sampler.set_epoch(epoch)
        else:
            shuffle = torch.Generator().manual_seed(derive_seed(config.seed, _SHUFFLE, epoch))
            sampler = RandomSampler(self.train_set, generator=shuffle)
        sizes = _batch_sizes(len(sampler), config.batch_size, config.max_steps_per_epoch)
        lr = self.optimizer.param_groups[0]["lr"]
        with tqdm(total=len(sizes), desc=f"epoch {epoch}/{config.epochs}", unit="batch", leave=False,
                  disable=not show) as bar:
            train = self._pass(self.net, self.train_set, sampler, sizes, self.generator, epoch, bar, training=True)
            val_gen = torch.Generator(device=self.device)
            val_gen.manual_seed(derive_seed(config.seed, _VAL, self.rank))  # the same draws every epoch
            val_idx = list(range(self.rank, len(self.val_set), self.world))
            # the bare module: DDP's forward may broadcast buffers, a collective that would
            # hang when ranks hold different numbers of validation batches
            val = self._pass(self.model, self.val_set, val_idx, _batch_sizes(len(val_idx), config.batch_size),
                             val_gen, epoch)
            bar.set_postfix(train=f"{train['loss']:.4g}", val=f"{val['loss']:.4g}")
        if not math.isfinite(val["loss"]):
            raise ConfigError(f"validation loss is {val['loss']} at epoch {epoch}; lower the learning rate "
                              "or check the data")
        self.scheduler.step(val["loss"])
        if val["loss"] < p.best_val_loss:
            p.best_val_loss, p.best_epoch, p.bad_epochs = val["loss"], epoch, 0
            p.best_state = cpu_state(self.model.state_dict())
        else:
            p.bad_epochs += 1
        p.epoch, p.stopped_early = epoch, 0 < config.early_stop_patience <= p.bad_epochs
        row = {"epoch": epoch, "train_loss": train.pop("loss"), "val_loss": val.pop("loss"), "lr": lr,
               "seconds": round(time.perf_counter() - t0, 3), **records}
        for prefix, stats in (("train", train), ("val", val)):
            for key, value in stats.items():
                row.setdefault(f"{prefix}_{key}", value)
        p.history.append(row)
        return row

    def _pass(self, net, dataset, sampler, sizes: list[int], generator, epoch: int, bar=None,
              training: bool = False) -> dict[str, float]:
        """One pass over ``dataset``; loss and metrics as sample-weighted means over all ranks."""
        config = self.config
        base_seed = torch.Generator().manual_seed(derive_seed(config.seed, _SHUFFLE, epoch, int(training)))
        loader = DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, num_workers=config.num_workers,
                            collate_fn=self.task.collate,
                            pin_memory=self.device.type == "cuda", generator=base_seed)  # not the global RNG
        net.train(training)
        total, sums = 0.0, {}
        with torch.set_grad_enabled(training):
            for step, (n, batch) in enumerate(zip(sizes, loader), 1):  # sizes first: no extra batch is loaded
                batch = _to_device(batch, self.device)
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                    loss, metrics = self.task.loss(net, batch, generator)
                value = float(loss.detach())
                if training:
                    self._check_finite(value, epoch, step)
                    self._step(loss)
                if bar is not None:
                    bar.update(1)
                total += value * n
                for key, metric in metrics.items():
                    sums[key] = sums.get(key, 0.0) + float(metric) * n
        keys = sorted(sums)
        vec = torch.tensor([sum(sizes), total, *(sums[k] for k in keys)], dtype=torch.float64, device=self.comm)
        if self.world > 1:
            dist.all_reduce(vec)
        count = max(vec[0].item(), 1.0)
        return {"loss": vec[1].item() / count, **{k: vec[i + 2].item() / count for i, k in enumerate(keys)}}

    def _check_finite(self, value: float, epoch: int, step: int) -> None:
        check = value
        if self.world > 1:  # every rank must raise together, or the others hang in backward
            reduced = torch.tensor([value], dtype=torch.float64, device=self.comm)
            dist.all_reduce(reduced)
            check = reduced.item()
        if not math.isfinite(check):
            raise ConfigError(f"training loss is not finite at epoch {epoch}, step {step} "
                              f"(loss {value} on rank {self.rank}); lower the learning rate or check the data")

    def _step(self, loss: Tensor) -> None:
        opt, scaler, clip = self.optimizer, self.scaler, self.config.grad_clip
        opt.zero_grad(set_to_none=True)
        (loss if scaler is None else scaler.scale(loss)).backward()
        if clip > 0:
            if scaler is not None:
                scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(self.net.parameters(), clip)
        if scaler is None:
            opt.step()
        else:
            scaler.step(opt)
            scaler.update()

    def save_checkpoint(self, path: Path) -> None:
        """Collective (gathers every rank's RNG states); only rank 0 writes."""
        rngs = _gather(rng_state(self.generator), self.world)
        if self.rank == 0:
            with atomic_file(path, force=True) as tmp:
                torch.save({
                    "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": asdict(self.config),
                    "world_size": self.world, "model": cpu_state(self.model.state_dict()),
                    "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                    "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                    "progress": vars(self.progress), "rng": rngs, "meta": self.meta}, tmp)

    def result(self) -> TrainResult:
        p = self.progress
        return TrainResult(p.epoch, p.best_epoch, p.best_val_loss, p.history, p.stopped_early)


def _batch_sizes(n: int, batch_size: int, max_steps: int | None = None) -> list[int]:
    sizes = [min(batch_size, n - i) for i in range(0, n, batch_size)]
    return sizes if max_steps is None else sizes[:max_steps]


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(_to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _setup_distributed(device_arg) -> tuple[torch.device, int, int, bool]:
    """(device, rank, world size, whether we created the process group)."""
    device = resolve_device(device_arg)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device, 0, 1, False
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, dist.get_rank(), dist.get_world_size(), created


def _gather(obj: Any, world: int) -> list:
    if world == 1:
        return [obj]
    objs = [None] * world
    dist.all_gather_object(objs, obj)
    return objs
