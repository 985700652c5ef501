"""Temporary wrappers for the calls PyTorch offers no hook for, shared by every active watch.

One wrapper per (object, attribute) is installed when the first watch needs it and removed when
the last one leaves, whatever order the watches leave in; each watch adds an *around* function
to the wrapper's chain. A module function is wrapped through the module attribute.

A method of one instance (``opt.zero_grad``, ``scheduler.step``) is wrapped where its class
defines it, acting for the registered instances only: a function stored in the instance's own
``__dict__`` would be saved with it (``torch.save(model)``, ``scheduler.state_dict()`` returns
its ``__dict__``) and copied by ``copy.deepcopy`` into objects that outlive the watch.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from typing import Any

Around = Callable[..., Any]
"""``around(call, *args, **kwargs)``: does its own work and calls ``call(*args, **kwargs)``."""

_MISSING = object()


def _never() -> bool:
    return False


# Says when a wrapped call must go straight to the original: while torch.compile traces the
# caller (set by the watch to torch.compiler.is_compiling), so that compiled code neither
# breaks its graph on the watch's work nor guards on the watch's state.
bypass: Callable[[], bool] = _never


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

        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if bypass():
                return original(*args, **kwargs)
            return _run(chain, original, args, kwargs)

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


def _run(chain: list[Around], original: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    """Call ``original`` through the arounds of ``chain``, the first one outermost."""
    if len(chain) == 1:  # one watch: the common case, kept short
        return chain[0](original, *args, **kwargs)
    if not chain:
        return original(*args, **kwargs)

    def call(index: int, args: tuple, kwargs: dict) -> Any:
        if index == len(chain):
            return original(*args, **kwargs)
        return chain[index](lambda *a, **k: call(index + 1, a, k), *args, **kwargs)

    return call(0, args, kwargs)


class _MethodWrapper:
    """A method wrapped on the class that defines it, for the instances registered with it;
    other instances go straight through."""

    def __init__(self, cls: type, attr: str) -> None:
        self.cls = cls
        self.attr = attr
        self.original = original = vars(cls)[attr]
        # id(instance) -> (instance, its chain of arounds)
        self.instances: dict[int, tuple[object, list[Around]]] = {}
        instances = self.instances

        @functools.wraps(original)
        def wrapper(self: object, *args: Any, **kwargs: Any) -> Any:
            if bypass():
                return original(self, *args, **kwargs)
            entry = instances.get(id(self))
            if entry is None or entry[0] is not self:
                return original(self, *args, **kwargs)
            return _run(entry[1], original.__get__(self, type(self)), args, kwargs)

        wrapper.__loopcheck_wrapper__ = True  # type: ignore[attr-defined]
        self.wrapper = wrapper
        setattr(cls, attr, wrapper)

    def uninstall(self) -> None:
        if vars(self.cls).get(self.attr) is self.wrapper:
            setattr(self.cls, self.attr, self.original)


_installed: dict[tuple[int, str], _Wrapper] = {}
_methods: dict[tuple[int, str], _MethodWrapper] = {}


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


class _MethodHandle:
    """Removes one around function from one instance's chain; removing twice is harmless."""

    def __init__(self, key: tuple[int, str], instance: object, around: Around) -> None:
        self._key: tuple[int, str] | None = key
        self._instance = instance
        self._around = around

    def remove(self) -> None:
        if self._key is None:
            return
        wrapper = _methods[self._key]
        chain = wrapper.instances[id(self._instance)][1]
        chain.remove(self._around)
        if not chain:
            del wrapper.instances[id(self._instance)]
            if not wrapper.instances:
                wrapper.uninstall()
                del _methods[self._key]
        self._key = None
        self._instance = None


def wrap_method(instance: object, attr: str, around: Around) -> Handle | _MethodHandle:
    """Route calls of ``instance.attr`` (a method) through ``around`` until the handle is
    removed, without storing anything in the instance. A method the instance holds in its own
    ``__dict__``, or one its class does not define as a plain function, is wrapped there."""
    cls = next((c for c in type(instance).__mro__ if attr in vars(c)), None)
    if (
        cls is None
        or attr in getattr(instance, "__dict__", {})
        or not isinstance(vars(cls)[attr], types.FunctionType)
    ):
        return wrap(instance, attr, around)
    key = (id(cls), attr)
    wrapper = _methods.get(key)
    if wrapper is None:
        wrapper = _methods[key] = _MethodWrapper(cls, attr)
    entry = wrapper.instances.get(id(instance))
    if entry is None or entry[0] is not instance:
        entry = wrapper.instances[id(instance)] = (instance, [])
    entry[1].append(around)
    return _MethodHandle(key, instance, around)


def installed() -> int:
    """How many wrappers are in place now (0 when no watch is active)."""
    return len(_installed) + len(_methods)
