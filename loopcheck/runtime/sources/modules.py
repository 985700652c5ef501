"""FORWARD moves: where iterations begin, and the models of ``watch_all``, from forward passes.

An optimizer's iteration begins at the first forward pass (or ``zero_grad``) after its step. The
``forward`` of the models given is wrapped where their classes define it, for them only (a hook
stored in the module would be saved by ``torch.save(model)`` and copied by ``copy.deepcopy``,
and any global module hook sends every submodule's call down torch's slow path). With no model
given (``watch_all``, ``loopcheck run``), a global forward pre-hook sees every module's forward:
each module seen for the first time has its parameters handed to the watch (so that a backward
reaching parameters of no optimizer shows them: LC602), and any module's forward after a step
begins the next iteration. A hook that runs inside a compiled graph
returns before reading anything dynamo would guard on, so that it causes no recompilation and
never breaks a graph.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import torch
from torch import Tensor
from torch.nn.modules.module import register_module_forward_pre_hook

from loopcheck.runtime.core import Core
from loopcheck.runtime.sources import Wrap

_is_compiling = torch.compiler.is_compiling


# torch warns at every call of a torch.compile'd module while a global module hook exists: ours
# returns at once inside compiled code, and its running for the compiled module itself (outside
# the graph) is what it is there for.
_GLOBAL_HOOK_WARNING = r"Using `torch\.compile\(module\)` when there are global hooks on modules"


def _quiet_global_hook_warning(stack: ExitStack) -> None:
    """Silence torch's warning about our global hook while it is installed, and only it."""
    warnings.filterwarnings("ignore", message=_GLOBAL_HOOK_WARNING, category=UserWarning)
    entry = warnings.filters[0]

    def remove() -> None:
        if entry in warnings.filters:
            warnings.filters.remove(entry)
            mutated = getattr(warnings, "_filters_mutated", None)  # clears the "once" caches
            if mutated is not None:
                mutated()

    stack.callback(remove)


class ModuleEvents:
    """Turns forward passes into iteration boundaries and a model's clear into ZERO moves."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self._known: dict[int, weakref.ref] = {}  # modules seen (no model given)
        self.found: Callable[[torch.nn.Module], None] | None = None  # told of each new one

    def install(self, models: list[torch.nn.Module], stack: ExitStack, wrap_method: Wrap) -> None:
        """The models' ``forward`` wrapped for them (where their classes define it: nothing is
        stored in the models, and their submodules keep torch's fast call path); with no model,
        a global forward pre-hook that sees every module's forward."""
        for model in models:
            wrap_method(model, "forward", self._around_model_forward)
        if not models:
            stack.enter_context(register_module_forward_pre_hook(self._on_any_forward))
            _quiet_global_hook_warning(stack)

    def name_of(self, param: Tensor) -> str | None:
        """The parameter's name in the outermost module seen that holds it."""
        best: str | None = None
        for ref in self._known.values():
            module = ref()
            if module is None:
                continue
            for name, p in module.named_parameters():
                if p is param and (best is None or len(name) > len(best)):
                    best = name
        return best

    # ----------------------------------------------------------------- forward

    def _around_model_forward(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        core = self.core
        if not core.stopped:  # (not reached while compiling: see patching.bypass)
            with core.guard:
                if core.awaiting_forward:
                    self._begin_iterations()
                core.trace.event("forward")
        return call(*args, **kwargs)

    def _on_any_forward(self, module: torch.nn.Module, args: Any) -> None:
        # called for every module's forward: kept short
        if _is_compiling():
            return  # traced into a compiled graph: not seen (docs/runtime.md)
        core = self.core
        if self.found is not None:
            ref = self._known.get(id(module))
            if (ref is None or ref() is not module) and not core.stopped:
                self._known[id(module)] = weakref.ref(module)
                with core.guard:
                    self.found(module)
        if core.awaiting_forward and not core.stopped:
            with core.guard:
                self._begin_iterations()
                core.trace.event("forward")

    def _begin_iterations(self) -> None:
        core = self.core
        core.awaiting_forward = False
        for o in core.opts:
            if o.after_step:
                core.new_iteration(o)
