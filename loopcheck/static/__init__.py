"""The static observer: turns libcst syntax into protocol events, loop by loop."""

from __future__ import annotations

from loopcheck.static.analysis import analyze
from loopcheck.static.model import FileModel
from loopcheck.static.project import Project

__all__ = ["FileModel", "Project", "analyze"]
