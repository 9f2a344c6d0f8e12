"""Quality-control pictures (matplotlib, headless)."""

from .figures import phantom_overview

__all__ = ["phantom_overview"]
