"""``--stream``: the options of ``difftract train`` that draw simulated subjects on the fly.

Both trainers take them; a model supplies its preparation (``phantom_arrays``) and how its
dataset is built from subjects. See :mod:`difftract.training.stream` for the seed layout.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path

from ..errors import ConfigError

log = logging.getLogger("difftract")

EPILOG = """\
streamed subjects (--stream PRESET instead of SUBJECT_DIRs):
  Every epoch trains on --subjects-per-epoch new phantoms (per rank), simulated by a background
  process while the previous epoch trains, so no model sees the same geometry twice (with a
  seed-driven preset such as random). Phantom settings other than the preset are given with
  --phantom KEY=VALUE (any PhantomConfig field; VALUE is JSON, e.g. snr=30, bvals=[1000,2000]).
  Validation uses --val-subjects held-back seeds of the same stream; test seeds are never drawn.
  Subjects are cached in --pool-dir (default W.stream/), bounded by --pool-size and --pool-gb
  (least recently used evicted); an evicted subject is simulated again identically, so --resume
  stays exact. The metrics file records the seeds of each epoch's subjects.
"""


def add_arguments(parser: argparse.ArgumentParser, default_subjects: int) -> None:
    g = parser.add_argument_group("streamed subjects (instead of SUBJECT_DIRs)")
    g.add_argument("--stream", metavar="PRESET", help="simulate training subjects on the fly with this phantom preset")
    stream_options = []

    def option(*names, **kwargs):
        stream_options.append(g.add_argument(*names, **kwargs))

    option("--phantom", action="append", default=[], metavar="KEY=VALUE",
           help="a phantom setting of the streamed subjects (repeatable; VALUE is JSON)")
    option("--stream-base", type=int, default=0, metavar="N",
           help="stream number: runs with another base never share subjects (default: %(default)s)")
    option("--subjects-per-epoch", type=int, default=default_subjects, metavar="K",
           help="subjects per epoch and rank (default: %(default)s)")
    option("--epochs-per-subject", type=int, default=1, metavar="E",
           help="epochs each set of subjects serves: 1 new subjects every epoch, 0 the same K "
                "throughout (default: %(default)s)")
    option("--pool-dir", type=Path, metavar="D", help="subject cache folder (default: W.stream/)")
    option("--pool-size", type=int, metavar="N",
           help="most subjects kept in the pool (default: two epochs' and the validation subjects)")
    option("--pool-gb", type=float, default=8.0, help="most gigabytes kept in the pool (default: %(default)s)")
    option("--stream-workers", type=int, default=1, metavar="N",
           help="processes simulating subjects beside the training; more keep a GPU fed; 0 simulates "
                "in the training process when a subject is needed (default: %(default)s)")
    option("--stream-timeout", type=float, default=3600.0, metavar="S",
           help="longest wait for one subject, seconds (default: %(default)s)")
    # what check_sources compares with: a stream option given without --stream is refused
    parser.set_defaults(stream_defaults={a.dest: a.default for a in stream_options})


def phantom_overrides(items: list[str], defaults: dict) -> dict:
    """``--phantom KEY=VALUE`` items over a model's defaults (VALUE parsed as JSON, else kept as text)."""
    out = dict(defaults)
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--phantom takes KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(text)
        except ValueError:
            out[key.strip()] = text
    return out


def check_sources(args: argparse.Namespace) -> None:
    """Exactly one of SUBJECT_DIRs and ``--stream``; stream options only with ``--stream``."""
    if bool(args.subjects) == bool(args.stream):
        raise ConfigError("give training SUBJECT_DIRs or --stream PRESET (one of the two)")
    if not args.stream:
        given = [f"--{k.replace('_', '-')}" for k, default in args.stream_defaults.items()
                 if getattr(args, k) != default]
        if given:
            raise ConfigError(f"{', '.join(given)} need{'s' if len(given) == 1 else ''} --stream")
    elif getattr(args, "cache_dir", None) is not None:
        raise ConfigError("--cache-dir is for SUBJECT_DIRs; streamed subjects are cached in --pool-dir")


def open_stream(args: argparse.Namespace, prepare: Callable, settings: dict, phantom_defaults: dict):
    """The recipe, pool and plan of ``--stream``: ``(pool, plan, record)``; the caller closes the pool.

    ``record`` (JSON-like) describes the stream for the weights' metadata; resuming with
    another stream is refused through it. Pool location and size are not part of it.
    """
    from ..training.pool import SubjectPool
    from ..training.recipe import SubjectRecipe, phantom_recipe
    from ..training.stream import StreamPlan, distributed_rank

    rank, world = distributed_rank()
    plan = StreamPlan(base=args.stream_base, subjects_per_epoch=args.subjects_per_epoch,
                      epochs_per_subject=args.epochs_per_subject, val_subjects=args.val_subjects,
                      rank=rank, world_size=world)
    recipe = SubjectRecipe(phantom_recipe(args.stream, phantom_overrides(args.phantom, phantom_defaults)),
                           prepare, settings)
    if not args.pool_gb > 0:
        raise ConfigError(f"--pool-gb must be positive, got {args.pool_gb}")
    if args.pool_size is not None and args.pool_size < 1:
        raise ConfigError(f"--pool-size must be at least 1, got {args.pool_size}")
    # every rank's worker writes to the same pool: one epoch needs each rank's subjects at once
    size = 2 * plan.subjects_per_epoch * world + plan.val_subjects if args.pool_size is None else args.pool_size
    if size < plan.subjects_per_epoch * world + plan.val_subjects:
        log.warning("--pool-size %d is under one epoch's subjects (all ranks) and the validation ones: "
                    "prefetched subjects may be evicted before use and simulated again", size)
    folder = args.pool_dir or args.out.with_name(args.out.stem + ".stream")
    if args.stream_workers < 0:
        raise ConfigError(f"--stream-workers must be 0 or more, got {args.stream_workers}")
    pool = SubjectPool(recipe, folder, max_subjects=size, max_bytes=int(args.pool_gb * 2**30),
                       workers=args.stream_workers, timeout=args.stream_timeout)
    record = {"recipe": recipe.describe(), **plan.describe()}
    return pool, plan, record


def open_datasets(args: argparse.Namespace, prepare: Callable, settings: dict, phantom_defaults: dict,
                  load: Callable, dataset: Callable):
    """The pool, training and validation datasets of ``--stream`` subjects, and their meta.

    ``load(seed, arrays)`` makes a model's subject from the pool's arrays, and
    ``dataset(n_samples, seed, validation)`` the model's dataset over a list of subjects
    (a partial): training draws new samples every epoch, validation the same ones.
    """
    from ..training.stream import StreamDataset

    pool, plan, record = open_stream(args, prepare, settings, phantom_defaults)
    train_set = StreamDataset(pool, plan.seeds, load, dataset(args.samples_per_epoch, args.seed, False),
                              args.samples_per_epoch, last_epoch=args.epochs)
    val_set = StreamDataset(pool, plan.validation_seeds, load, dataset(args.val_samples, args.seed + 10_000, True),
                            args.val_samples, prefetch=False)
    return pool, train_set, val_set, {"stream": record, "val_subjects": [f"seed{s}" for s in plan.validation_seeds()]}


def stream_summary(pool) -> dict:
    """Sidecar facts of a finished streamed run: subjects simulated here and their mean time."""
    seconds = round(sum(pool.seconds.values()) / len(pool.seconds), 3) if pool.seconds else None
    return {"subjects_simulated": len(pool.seconds), "seconds_per_subject": seconds}
