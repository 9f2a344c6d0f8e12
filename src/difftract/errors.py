"""One exception family for everything difftract refuses to do.

Every message names the file (when there is one) and what is wrong with it. The CLI
turns a :class:`DifftractError` into one line on stderr and exit code 2.
"""

from __future__ import annotations

from pathlib import Path


class DifftractError(Exception):
    """Base class of all errors raised on purpose by difftract."""


class InputError(DifftractError, ValueError):
    """An input file is missing, unreadable or inconsistent.

    Parameters
    ----------
    path : str or Path or None
        The offending file; it is put at the front of the message.
    problem : str
        What is wrong, in words a user can act on.
    """

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")


class OutputExistsError(DifftractError, FileExistsError):
    """An output already exists and ``force`` was not given."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        super().__init__(f"{path}: output exists (use --force to overwrite)")


class ConfigError(DifftractError, ValueError):
    """A parameter value is out of range or inconsistent with another."""


class DifftractWarning(UserWarning):
    """Something was accepted but changed or is doubtful (e.g. bvecs normalised)."""


class ResourceError(DifftractError, MemoryError):
    """A stage ran out of memory; the message names the stage and the option to lower."""
