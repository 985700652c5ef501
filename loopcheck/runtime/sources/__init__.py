"""The event sources: torch hooks and temporary wrappers turned into protocol moves, one module
per kind (optimizer, parameters, clipping, scaler, scheduler, modules). Hooks record, the
protocol and :mod:`loopcheck.runtime.checks` decide."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Wrap = Callable[[object, str, Callable[..., Any]], None]
"""``wrap(owner, attr, around)``: route ``owner.attr`` through ``around`` while the watch is
active (see :mod:`loopcheck.runtime.patching`)."""


def arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    """A call's argument, given by position or by name."""
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)
