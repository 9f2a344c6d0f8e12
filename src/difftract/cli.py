"""The ``difftract`` command line: a thin layer over the library.

Every command validates its inputs before doing work, refuses to overwrite outputs
without ``--force``, writes atomically, and turns any :class:`DifftractError` into one
line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import warnings

from . import __version__
from .commands import check, cluster, cohort, connectome, demo, fit, run, score, simulate, track, train
from .errors import DifftractError

log = logging.getLogger("difftract")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="difftract",
        description="Deep-learning diffusion-MRI tractography: from a DWI (NIfTI + FSL bval/bvec + mask) "
                    "to a tractogram, with ground-truth phantoms to measure every step.",
        epilog="Run 'difftract COMMAND --help' for a command's inputs, outputs and defaults.")
    parser.add_argument("--version", action="version", version=f"difftract {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    simulate.add_parser(sub)
    check.add_parser(sub)
    run.add_parser(sub)
    cohort.add_parser(sub)
    fit.add_parser(sub)
    track.add_parser(sub)
    score.add_parser(sub)
    cluster.add_parser(sub)
    train.add_parser(sub)
    connectome.add_parser(sub)
    demo.add_parser(sub)
    return parser


class _LevelFormatter(logging.Formatter):
    """``difftract: note: ...`` for information, ``difftract: warning: ...`` for warnings."""

    def format(self, record: logging.LogRecord) -> str:
        kind = "warning" if record.levelno >= logging.WARNING else "note"
        return f"difftract: {kind}: {record.getMessage()}"


def _setup_messages(quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LevelFormatter())
    log.handlers[:] = [handler]
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"difftract: warning: {message}", file=sys.stderr)

    warnings.showwarning = show


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is so that every staging folder is removed on the way out."""


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``difftract`` console script; returns the exit code.

    A user's mistake (bad input, an existing output, out of memory) is one line on stderr
    and exit code 2; Ctrl-C gives 130 and SIGTERM 143, both after removing what the
    command had started to write.
    """
    from .memory import is_out_of_memory

    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_messages(args.quiet)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    try:
        return args.func(args)
    except DifftractError as exc:
        print(f"difftract: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, permission denied, a file where a folder should be...
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"difftract: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except Terminated:
        print("difftract: terminated (SIGTERM); partial outputs removed", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("difftract: interrupted; partial outputs removed", file=sys.stderr)
        return 130
    except (MemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
        print(f"difftract: error: out of memory during '{args.command}': lower --chunk-size or --batch-size "
              "where the command has them, or use a machine with more memory", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
