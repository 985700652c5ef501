"""Temporary wrappers for the calls PyTorch offers no hook for, shared by every active watch.

One wrapper per (object, attribute) is installed when the first watch needs it and removed when
the last one leaves, whatever order the watches leave in; each watch adds an *around* function
to the wrapper's chain. An instance is wrapped through its own ``__dict__`` (its class is never
touched); a module function through the module attribute.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

Around = Callable[..., Any]
"""``around(call, *args, **kwargs)``: does its own work and calls ``call(*args, **kwargs)``."""

_MISSING = object()


class _Wrapper:
    def __init__(self, owner: object, attr: str) -> None:
        self.owner = owner
        self.attr = attr
        self.original = getattr(owner, attr)
        # What to put back: an attribute of the instance's own __dict__ (or a module's), or
        # nothing, so that the class's attribute shows through again.
        self.saved = vars(owner).get(attr, _MISSING)
        self.arounds: list[Around] = []
        original = self.original
        chain = self.arounds

        def call(index: int, args: tuple, kwargs: dict) -> Any:
            if index == len(chain):
                return original(*args, **kwargs)
            return chain[index](lambda *a, **k: call(index + 1, a, k), *args, **kwargs)

        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if len(chain) == 1:  # one watch: the common case, kept short
                return chain[0](original, *args, **kwargs)
            if not chain:
                return original(*args, **kwargs)
            return call(0, args, kwargs)

        wrapper.__loopcheck_wrapper__ = True  # type: ignore[attr-defined]
        self.wrapper = wrapper
        setattr(owner, attr, wrapper)

    def uninstall(self) -> None:
        if getattr(self.owner, self.attr, None) is not self.wrapper:
            return  # someone wrapped it again on top: leave theirs; ours now just passes through
        if self.saved is _MISSING:
            delattr(self.owner, self.attr)
        else:
            setattr(self.owner, self.attr, self.saved)


_installed: dict[tuple[int, str], _Wrapper] = {}


class Handle:
    """Removes one around function; removing twice is harmless."""

    def __init__(self, key: tuple[int, str], around: Around) -> None:
        self._key: tuple[int, str] | None = key
        self._around = around

    def remove(self) -> None:
        if self._key is None:
            return
        wrapper = _installed[self._key]
        wrapper.arounds.remove(self._around)
        if not wrapper.arounds:
            wrapper.uninstall()
            del _installed[self._key]
        self._key = None


def wrap(owner: object, attr: str, around: Around) -> Handle:
    """Route calls of ``owner.attr`` through ``around`` until the handle is removed."""
    key = (id(owner), attr)
    wrapper = _installed.get(key)
    if wrapper is None:
        wrapper = _installed[key] = _Wrapper(owner, attr)
    wrapper.arounds.append(around)
    return Handle(key, around)


def installed() -> int:
    """How many wrappers are in place now (0 when no watch is active)."""
    return len(_installed)
