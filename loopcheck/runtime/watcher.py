"""The ``Watch``: wires the event sources to one optimizer list, enters and leaves, reports.

Hooks record, checks decide: the sources (:mod:`loopcheck.runtime.sources`) turn torch hooks and
temporary wrappers into protocol moves, :mod:`loopcheck.protocol` owns the order rules and
:mod:`loopcheck.runtime.checks` what only a run can see. Everything installed goes into one
``ExitStack``, closed on exit, also when the block raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import ExitStack
from typing import Any

import torch

from loopcheck.runtime import dynamo, patching
from loopcheck.runtime.core import MODES, Core, OptRecord, StepLimitReached
from loopcheck.runtime.picture import render_html
from loopcheck.runtime.sites import NO_SITE, Where
from loopcheck.runtime.sources.clearing import ClearEvents
from loopcheck.runtime.sources.clipping import ClipEvents
from loopcheck.runtime.sources.construction import ConstructionEvents
from loopcheck.runtime.sources.modules import ModuleEvents
from loopcheck.runtime.sources.optimizer import OptimizerEvents
from loopcheck.runtime.sources.parameters import GradientEvents
from loopcheck.runtime.sources.scaler import ScalerEvents
from loopcheck.runtime.sources.scheduler import SchedulerEvents
from loopcheck.runtime.trace import render_json, render_text

__all__ = ["MODES", "StepLimitReached", "Watch"]

patching.bypass = torch.compiler.is_compiling


def _as_list(value: Any, kind: type, what: str) -> list:
    if value is None:
        return []
    try:
        items = [value] if isinstance(value, kind) else list(value)
    except TypeError:
        items = [value]
    for item in items:
        if not isinstance(item, kind):
            raise TypeError(f"loopcheck.watch: {what} must be {kind.__name__}, got {item!r}")
    return items


def _several(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


class Watch(Core):
    """Watches optimizers (and models) while the ``with`` block runs; see
    :func:`loopcheck.watch`."""

    def __init__(
        self,
        optimizers: torch.optim.Optimizer | Iterable[torch.optim.Optimizer] | None,
        models: torch.nn.Module | Iterable[torch.nn.Module] | None = None,
        *,
        mode: str = "warn",
        scalers: Any = None,
        schedulers: Any = None,
        scope: bool = False,
        max_steps: int | None = None,
    ) -> None:
        super().__init__(mode)
        opts = _as_list(optimizers, torch.optim.Optimizer, "opt")
        if not opts and not scope:
            raise ValueError("loopcheck.watch: give at least one optimizer")
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"loopcheck: max_steps must be at least 1, got {max_steps}")
        self.max_steps = max_steps
        self._scope = scope
        self._models: list[torch.nn.Module] = _as_list(models, torch.nn.Module, "model")
        self._scalers: list[Any] = _several(scalers)
        self._schedulers: list[Any] = _several(schedulers)
        self._stack: ExitStack | None = None
        self._done = False
        self.clipping = ClipEvents(self)
        self.clearing = ClearEvents(self)
        self.gradients = GradientEvents(self)
        self.optimizers = OptimizerEvents(self, self.clipping, self._adopt if scope else None)
        self.scaler_events = ScalerEvents(self, self.optimizers, self.gradients.scaled)
        self.scheduler_events = SchedulerEvents(self, self.optimizers)
        self.modules = ModuleEvents(self)
        self.construction = ConstructionEvents(
            self, self._adopt_constructed, self._adopt_scheduler, self._adopt_scaler
        )
        self.scheduler_events.constructing = lambda: self.construction.depth > 0
        if scope:
            self.modules.found = self._adopt_module
            self.namer = self.modules.name_of
        for opt in opts:
            self.add_optimizer(opt)
        for number, model in enumerate(self._models):
            prefix = f"model[{number}]." if len(self._models) > 1 else ""
            for name, param in model.named_parameters():
                self.add_param(param, prefix + name)

    # ----------------------------------------------------------------- public interface

    def __enter__(self) -> Watch:
        if self._stack is not None or self._done:
            raise RuntimeError("a loopcheck watch can be entered once; make a new one")
        dynamo.keep_out()
        stack = ExitStack()
        self._stack = stack
        try:
            self._install(stack)
        except BaseException:
            self._stack = None
            stack.close()
            raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        stack, self._stack = self._stack, None
        self._done = True
        ended = isinstance(exc, StepLimitReached) and exc.core is self  # max_steps reached
        try:
            if stack is not None:
                stack.close()
        finally:
            self._finish(failed=exc_type is not None and not ended)
        return ended

    @property
    def checked(self) -> bool:
        """Did any watched optimizer step (or anything get found)? Else nothing was checked."""
        return bool(self.findings) or any(o.steps for o in self.opts)

    def report(self, format: str = "text") -> str:
        """The per-step trace of events and the findings, as ``"text"``, ``"json"`` or
        ``"html"`` (one self-contained page that draws the trace and the clip norms)."""
        self.checks.flush()
        summary = {
            "optimizers": [type(o.opt).__name__ for o in self.opts],
            "steps": [o.steps for o in self.opts],
            "mode": self.mode,
            "stopped": self.stopped,
            "checked": self.checked,
        }
        if format == "json":
            return render_json(self.trace, self.findings, self.counts_list, summary)
        if format == "html":
            return render_html(self.trace, self.findings, self.counts_list, self.norms, summary)
        if format != "text":
            raise ValueError(f"report format must be 'text', 'json' or 'html', got {format!r}")
        names = ", ".join(f"{i}: {n}" for i, n in enumerate(summary["optimizers"])) or "none"
        steps = ", ".join(map(str, summary["steps"])) or "0"
        header = (
            f"loopcheck watch: optimizers ({names}), steps ({steps}), "
            f"{len(self.findings)} finding(s)"
        )
        if not self.checked:
            header += "\nnothing was checked: no optimizer stepped"
        if self.stopped:
            header += f"\nstopped checking after an internal error: {self.stopped}"
        return render_text(self.trace, self.findings, self.counts_list, header, self.multi)

    @property
    def counts(self) -> dict[tuple[str, str, int | None], int]:
        """How many times each finding occurred, by (code, where, optimizer)."""
        return {
            (f.code, f.where, f.optimizer): n
            for f, n in zip(self.findings, self.counts_list, strict=True)
        }

    # ----------------------------------------------------------------- installing

    def _install(self, stack: ExitStack) -> None:
        self.optimizers.install(stack)
        self.gradients.install(stack, self._wrap)
        self.clearing.install(self._wrap, stack)
        for o in self.opts:
            self.clearing.install_optimizer(o)
        for i in range(len(self.params)):
            self.gradients.hook_param(i)
        self.modules.install(self._models, stack, self._wrap_method)
        if self._scope:
            self.construction.install(self._wrap)
        self.clipping.install(self._wrap)
        for scaler in self._scalers:
            self.scaler_events.install_scaler(scaler, self._wrap_method)
        for scheduler in self._schedulers:
            self.scheduler_events.install_scheduler(scheduler, self._wrap_method)

    def _wrap(self, owner: object, attr: str, around: Callable[..., Any]) -> None:
        assert self._stack is not None
        self._stack.callback(patching.wrap(owner, attr, around).remove)

    def _wrap_method(self, instance: object, attr: str, around: Callable[..., Any]) -> None:
        assert self._stack is not None
        self._stack.callback(patching.wrap_method(instance, attr, around).remove)

    # ----------------------------------------------------------------- adopting (watch_all)

    def _adopt(self, opt: torch.optim.Optimizer) -> OptRecord:
        """Start watching an optimizer: made during the watch, or made before it and seen at
        its first step."""
        first = len(self.params)
        o = self.add_optimizer(opt)
        self.clearing.install_optimizer(o)
        for i in range(first, len(self.params)):
            self.gradients.hook_param(i)
        for older in self.opts[:-1]:
            if not older.retired and not older.ids.isdisjoint(o.ids):
                self.retire(older)
        return o

    def _adopt_constructed(self, opt: torch.optim.Optimizer) -> None:
        if self.by_opt.get(id(opt)) is not None:
            return
        groups = {id(g) for g in opt.param_groups}
        for o in self.opts:
            if not groups.isdisjoint(map(id, o.opt.param_groups)):
                # built on another optimizer's own parameter groups (SAM's base optimizer):
                # its steps are that optimizer's
                self.by_opt[id(opt)] = o
                self.seen.append(opt)
                return
        self._adopt(opt)

    def _adopt_scheduler(self, scheduler: Any) -> None:
        if self.construction.depth == 0:  # not a part of a scheduler being built
            self.scheduler_events.install_scheduler(scheduler, self._wrap_method)

    def _adopt_scaler(self, scaler: Any) -> None:
        self.scaler_events.install_scaler(scaler, self._wrap_method)

    def _adopt_module(self, module: torch.nn.Module) -> None:
        """A module ran its forward: watch its own parameters' gradients (orphans, LC602)."""
        for param in module.parameters(recurse=False):
            if param.requires_grad and id(param) not in self.index:
                self.gradients.hook_param(self.add_param(param, ""))

    # ----------------------------------------------------------------- the end

    def _finish(self, failed: bool) -> None:
        mode = self.mode
        if failed and mode == "raise":
            self.mode = "record"  # never hide the error in flight behind one of ours
        try:
            if self.stopped:
                return
            with self.guard:
                self.checks.flush()
            if not failed and not self.stopped:
                for o in self.opts:
                    # made during watch_all: it must have been cleared to be part of a loop
                    adopted_unused = self._scope and not o.zeroed
                    if (
                        o.steps == 0
                        and o.backwards >= 2
                        and not o.retired
                        and not adopted_unused
                        and not o.moved()  # stepped where the watch cannot see (compiled)
                    ):
                        where = Where(NO_SITE, 0, o.index)
                        self.emit("LC105", where, f"{o.backwards} backward passes, no step")
        finally:
            self.mode = mode
