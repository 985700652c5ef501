"""FORWARD moves and a model's ``zero_grad``: forward pre-hooks mark where iterations begin.

An optimizer's iteration begins at the first forward pass (or ``zero_grad``) after its step.
A given model gets a forward pre-hook and its ``zero_grad`` wrapped per instance; with no model
(``loopcheck run``), a global forward pre-hook sees every module's forward. A hook that runs
inside a compiled graph does nothing (so that it never breaks a graph).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import torch
from torch.nn.modules.module import register_module_forward_pre_hook

from loopcheck.protocol import Move
from loopcheck.runtime.core import Core
from loopcheck.runtime.sites import user_site
from loopcheck.runtime.sources import Wrap


class ModuleEvents:
    """Turns forward passes into iteration boundaries and a model's clear into ZERO moves."""

    def __init__(self, core: Core) -> None:
        self.core = core

    def install_model(self, model: torch.nn.Module, stack: ExitStack, wrap: Wrap) -> None:
        stack.enter_context(model.register_forward_pre_hook(self._on_forward))
        wrap(model, "zero_grad", self._zero_around(model))

    def install_global(self, stack: ExitStack) -> None:
        """Any module's forward after a step begins the next iteration (no model is known)."""
        stack.enter_context(register_module_forward_pre_hook(self._on_any_forward))

    def _on_forward(self, module: torch.nn.Module, args: Any) -> None:
        core = self.core
        if torch.compiler.is_compiling() or core.stopped:
            return  # traced into a compiled graph: not seen (docs/runtime.md)
        with core.guard:
            for o in core.opts:
                if o.after_step:
                    core.new_iteration(o)
            core.trace.event("forward")

    def _on_any_forward(self, module: torch.nn.Module, args: Any) -> None:
        # called for every submodule: cheap unless an optimizer has just stepped
        if any(o.after_step for o in self.core.opts):
            self._on_forward(module, args)

    def _zero_around(self, model: torch.nn.Module) -> Callable[..., Any]:
        core = self.core
        model_ids = {id(p) for p in model.parameters()}

        def around(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            result = call(*args, **kwargs)
            if core.stopped:
                return result
            with core.guard:
                site = user_site()
                for o in core.opts:
                    if o.ids <= model_ids:
                        core.on_zero(o, site, "model.zero")
                    elif not o.ids.isdisjoint(model_ids):
                        core.feed(o, Move.OPAQUE, site, label="model.zero(part)")
            return result

        return around
