"""The static observer: turns libcst syntax into protocol events, loop by loop."""

from __future__ import annotations

from loopcheck.static.model import FileModel, analyze

__all__ = ["FileModel", "analyze"]
