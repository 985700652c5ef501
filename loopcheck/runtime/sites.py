"""Where a move was made: the user's line behind a hook callback, which a finding points at.

A hook runs deep inside torch (and, when the user called a library, inside that library): the
site is the first frame outside torch and loopcheck, then past installed libraries (Accelerate,
Lightning) to the user's own line, remembering the library lines it went through.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from typing import NamedTuple

import torch

# Frames inside these directories are not the user's code: a finding points past them...
SKIP_DIRS = (
    os.path.dirname(torch.__file__) + os.sep,
    os.path.dirname(__file__) + os.sep,
)
# ... and past installed libraries (Accelerate, Lightning) when user code called them.
INSTALLED = tuple({sysconfig.get_paths()[key] + os.sep for key in ("purelib", "platlib")})

# code object -> is it torch's or loopcheck's? (asked for every frame of every event)
_skipped: dict[object, bool] = {}


class Site(NamedTuple):
    """The line of the user's code that made a move, and the lines of installed libraries it
    went through (an ``accelerator.backward`` called from two lines makes two sites). It is the
    ``where`` of the events given to the protocol."""

    file: str
    line: int
    via: tuple[tuple[str, int], ...] = ()


NO_SITE = Site("", 0)


class Where(NamedTuple):
    """Where a finding belongs: the site, the optimizer step, the optimizer (or None)."""

    site: Site
    step: int
    optimizer: int | None


def _is_skipped(code: object) -> bool:
    skipped = _skipped.get(code)
    if skipped is None:
        skipped = _skipped[code] = code.co_filename.startswith(SKIP_DIRS)  # type: ignore[attr-defined]
    return skipped


def user_site() -> Site:
    """The user's line that led to the hook running now."""
    frame = sys._getframe(1)
    while frame is not None and _is_skipped(frame.f_code):
        frame = frame.f_back
    if frame is None:
        return NO_SITE
    first = frame
    via: list[tuple[str, int]] = []
    installed = INSTALLED
    while frame.f_code.co_filename.startswith(installed):
        via.append((frame.f_code.co_filename, frame.f_lineno))
        frame = frame.f_back
        if frame is None or len(via) > 16:  # installed code all the way: report its first line
            return Site(first.f_code.co_filename, first.f_lineno)
    return Site(frame.f_code.co_filename, frame.f_lineno, tuple(via))
