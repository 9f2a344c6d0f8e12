"""``--stream``: the options of ``difftract train`` that draw simulated subjects on the fly.

Both trainers take them, as a :class:`~difftract.training.stream.StreamOptions` (see
:mod:`difftract.training.stream` for the seed layout and the pool).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import ConfigError
from ..training.stream import StreamOptions

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
    d = StreamOptions.defaults()
    g = parser.add_argument_group("streamed subjects (instead of SUBJECT_DIRs)")
    g.add_argument("--stream", metavar="PRESET", help="simulate training subjects on the fly with this phantom preset "
                                                      "(or several, comma-separated, alternating by subject seed)")
    options = []

    def option(*names, **kwargs):
        options.append(g.add_argument(*names, **kwargs))

    option("--phantom", action="append", default=[], metavar="KEY=VALUE",
           help="a phantom setting of the streamed subjects (repeatable; VALUE is JSON)")
    option("--stream-base", type=int, default=d["base"], metavar="N",
           help="stream number: runs with another base never share subjects (default: %(default)s)")
    option("--subjects-per-epoch", type=int, default=default_subjects, metavar="K",
           help="subjects per epoch and rank (default: %(default)s)")
    option("--epochs-per-subject", type=int, default=d["epochs_per_subject"], metavar="E",
           help="epochs each set of subjects serves: 1 new subjects every epoch, 0 the same K "
                "throughout (default: %(default)s)")
    option("--pool-dir", type=Path, metavar="D", help="subject cache folder (default: W.stream/)")
    option("--pool-size", type=int, metavar="N",
           help="most subjects kept in the pool (default: two epochs' and the validation subjects)")
    option("--pool-gb", type=float, default=d["pool_gb"],
           help="most gigabytes kept in the pool (default: %(default)s)")
    option("--stream-workers", type=int, default=d["workers"], metavar="N",
           help="processes simulating subjects beside the training; more keep a GPU fed; 0 simulates "
                "in the training process when a subject is needed (default: %(default)s)")
    option("--stream-timeout", type=float, default=d["timeout"], metavar="S",
           help="longest wait for one subject, seconds (default: %(default)s)")
    # what stream_options compares with: a stream option given without --stream is refused
    parser.set_defaults(stream_defaults={a.dest: a.default for a in options})


def phantom_settings(items: list[str]) -> dict:
    """``--phantom KEY=VALUE`` items as a dict (VALUE parsed as JSON, else kept as text)."""
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--phantom takes KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(text)
        except ValueError:
            out[key.strip()] = text
    return out


def stream_options(args: argparse.Namespace) -> StreamOptions | None:
    """``--stream`` and its options, or None; a stream option given with SUBJECT_DIRs is refused.

    (Neither or both of SUBJECT_DIRs and ``--stream`` is the trainer's to refuse.)
    """
    if not args.stream:
        given = [f"--{k.replace('_', '-')}" for k, default in args.stream_defaults.items()
                 if getattr(args, k) != default]
        if given and args.subjects:
            raise ConfigError(f"{', '.join(given)} need{'s' if len(given) == 1 else ''} --stream")
        return None
    return StreamOptions(preset=args.stream, phantom=phantom_settings(args.phantom), base=args.stream_base,
                         subjects_per_epoch=args.subjects_per_epoch, epochs_per_subject=args.epochs_per_subject,
                         pool_dir=args.pool_dir, pool_size=args.pool_size, pool_gb=args.pool_gb,
                         workers=args.stream_workers, timeout=args.stream_timeout)
