"""ZERO moves: ``zero_grad`` of optimizers and modules, and ``p.grad = None`` written by hand.

Each clear is seen where it is made, so that a finding points at its line and the trace names
it: ``zero`` (the optimizer's ``zero_grad``), ``model.zero`` (a module's), ``p.grad=None``. The
``zero_grad`` of the optimizers' classes and of ``nn.Module`` are wrapped where they are defined
while the watch runs; a call on an object that is not a watched optimizer but shares one's
parameter groups (Lightning's wrapped optimizer, SAM's base optimizer) counts for it.
``Parameter.__setattr__`` is set, while a watch runs, to see ``p.grad = None``: the first such
write since the gradients were produced is remembered, and when all of an optimizer's gradients
are gone (:meth:`loopcheck.runtime.core.Core.settle`) that is where and what the clear was.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import torch
from torch import Tensor

from loopcheck.protocol import Move
from loopcheck.runtime.core import Core, OptRecord
from loopcheck.runtime.sites import user_site
from loopcheck.runtime.sources import Wrap

_is_compiling = torch.compiler.is_compiling


class ClearEvents:
    """Turns ``zero_grad`` calls and gradients set to ``None`` into ZERO moves."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self._wrapped: set[type] = set()  # optimizer classes whose zero_grad is wrapped
        self._zeroing = 0  # zero_grad calls in flight: their own `p.grad = None` are theirs

    def install(self, wrap: Wrap, stack: ExitStack) -> None:
        self._wrap = wrap
        wrap(torch.nn.Module, "zero_grad", self._around_module_zero)
        _watch_grad_writes(self, stack)

    def install_optimizer(self, o: OptRecord) -> None:
        """Wrap ``zero_grad`` where ``o``'s class defines it (once per class)."""
        cls = next((c for c in type(o.opt).__mro__ if "zero_grad" in vars(c)), None)
        if cls is not None and cls not in self._wrapped:
            self._wrapped.add(cls)
            self._wrap(cls, "zero_grad", self._around_optimizer_zero)

    def _record_for(self, opt: object) -> OptRecord | None:
        core = self.core
        o = core.by_opt.get(id(opt))
        if o is not None:
            return o
        groups = getattr(opt, "param_groups", None)
        if groups is not None:
            for o in core.opts:
                if o.opt.param_groups is groups:  # the same list: a wrapper of a watched one
                    core.by_opt[id(opt)] = o
                    core.seen.append(opt)
                    return o
        return None

    # ----------------------------------------------------------------- zero_grad

    def _around_optimizer_zero(
        self, call: Callable[..., Any], opt: Any, *args: Any, **kwargs: Any
    ) -> Any:
        core = self.core
        o = None if self._zeroing or core.stopped else self._record_for(opt)
        self._zeroing += 1
        try:
            result = call(opt, *args, **kwargs)
        finally:
            self._zeroing -= 1
        if o is not None and not o.retired and not core.stopped:
            with core.guard:
                o.zeroed = True
                core.on_zero(o, user_site())
        return result

    def _around_module_zero(
        self, call: Callable[..., Any], module: Any, *args: Any, **kwargs: Any
    ) -> Any:
        core = self.core
        nested = self._zeroing
        self._zeroing += 1
        try:
            result = call(module, *args, **kwargs)
        finally:
            self._zeroing -= 1
        if nested or core.stopped or not core.opts:
            return result
        with core.guard:
            ids = {id(p) for p in module.parameters()}
            site = None
            for o in core.opts:
                if o.retired or o.ids.isdisjoint(ids):
                    continue
                site = site or user_site()
                if o.ids <= ids:
                    core.on_zero(o, site, "model.zero")
                else:
                    core.feed(o, Move.OPAQUE, site, label="model.zero(part)")
        return result

    # ----------------------------------------------------------------- p.grad = None

    def grad_cleared(self, param: Tensor) -> None:
        """``param.grad = None`` was written, outside any zero_grad."""
        if self._zeroing:
            return
        core = self.core
        i = core.index.get(id(param))
        if i is None or core.stopped:
            return
        for o in core.owners[i]:
            if o.had_grads and o.cleared_at is None:
                with core.guard:
                    o.cleared_at = user_site()


# `p.grad = None` is seen through Parameter.__setattr__, called for every attribute written on
# a parameter (zero_grad(set_to_none=True) writes one per parameter, every step): one plain
# function serves every active watch, kept as short as it can be.
_writers: list[ClearEvents] = []
_set = object.__setattr__


def _parameter_setattr(param: Tensor, name: str, value: Any) -> None:
    _set(param, name, value)
    if value is None and name == "grad" and _writers and not _is_compiling():
        for writer in _writers:
            writer.grad_cleared(param)


def _watch_grad_writes(writer: ClearEvents, stack: ExitStack) -> None:
    if "__setattr__" in vars(torch.nn.Parameter) and not _writers:
        return  # someone else's __setattr__: leave it alone (clears show as by hand)
    if not _writers:
        torch.nn.Parameter.__setattr__ = _parameter_setattr  # type: ignore[method-assign,assignment]
    _writers.append(writer)

    def remove() -> None:
        _writers.remove(writer)
        if not _writers and vars(torch.nn.Parameter).get("__setattr__") is _parameter_setattr:
            del torch.nn.Parameter.__setattr__

    stack.callback(remove)
