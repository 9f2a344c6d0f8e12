"""What difftract tells its user: one stage line per step, short summaries, progress bars.

A library call that takes minutes should say what it is doing, as the CLI does, and a
script or a cohort worker should be able to silence it. :class:`Console` is that one
reporter: every pipeline function takes one (``Console()`` prints to stdout,
``Console(quiet=True)`` only lets warnings through the ``difftract`` logger).

Each stage announces the single ``difftract`` command that would redo it on its own,
so a run can be reproduced, or continued, step by step (:func:`command_line`). These
lines are text for people and for the provenance sidecars; nothing parses them.
Paths inside a staging folder are shown as their final names (:func:`.io.sidecar.shown_path`).
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from tqdm.auto import tqdm

from .io.sidecar import shown_path


def command_line(command: str, *positional: object, **options: object) -> str:
    """The shell line of ``difftract COMMAND``: ``options`` as ``--long-name value``.

    ``True`` is a bare flag; ``None`` and ``False`` are left out; paths are shown at
    their final place.
    """
    words = ["difftract", *command.split(), *(str(p) for p in positional)]
    for key, value in options.items():
        if value is None or value is False:
            continue
        words.append("--" + key.replace("_", "-"))
        if value is not True:
            words.append(f"{value:g}" if isinstance(value, float) else str(value))
    return shown_path(shlex.join(words))


@dataclass
class Console:
    """Where a pipeline prints.

    Attributes
    ----------
    quiet : bool
        Print nothing but warnings (which go through the ``difftract`` logger) and hide
        the progress bars.
    stream : text stream
        Where stage lines and summaries go (default: the current ``sys.stdout``).
    """

    quiet: bool = False
    stream: TextIO | None = field(default=None, repr=False)

    def say(self, text: str = "") -> None:
        """Print a line (paths in a staging folder shown as their final names)."""
        if not self.quiet:
            print(shown_path(text), file=self.stream or sys.stdout, flush=True)

    def stage(self, line: str) -> None:
        """Announce a stage by the command that would run it alone."""
        self.say(f"\n$ {line}")

    def progress(self, total: int, desc: str, unit: str = "it") -> tqdm:
        """A progress bar (shown on a terminal unless quiet; never left behind)."""
        return tqdm(total=total, desc=desc, unit=unit, disable=True if self.quiet else None, leave=False)

    @property
    def bars(self) -> bool | None:
        """``progress=`` for the fits: False when quiet, None (their own rule) otherwise."""
        return False if self.quiet else None


def display(path: Path | str) -> str:
    """A path as the user will find it (its final place when it is being staged)."""
    return shown_path(str(path))
