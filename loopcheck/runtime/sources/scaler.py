"""UNSCALE, scaler STEP and SCALER_UPDATE moves: a GradScaler's methods, for its instance.

``scale`` marks the losses it returns (so that a backward knows its gradients are scaled),
``unscale_`` is an UNSCALE, ``step`` routes the optimizer's step through the scaler (and a step
the scaler skipped on inf/NaN runs no optimizer hook: it is recorded as skipped), ``update`` is a
SCALER_UPDATE.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from torch import Tensor

from loopcheck.protocol import Move
from loopcheck.runtime.core import Core
from loopcheck.runtime.sites import user_site
from loopcheck.runtime.sources import Wrap, arg
from loopcheck.runtime.sources.optimizer import OptimizerEvents


def _tensors(value: Any) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


class ScalerEvents:
    """Turns a GradScaler's calls into moves."""

    def __init__(
        self, core: Core, optimizers: OptimizerEvents, scaled: dict[int, weakref.ref]
    ) -> None:
        self.core = core
        self.optimizers = optimizers
        self.scaled = scaled  # id -> weak reference of each loss scaler.scale returned
        self.scalers: list[Any] = []

    def install_scaler(self, scaler: Any, wrap_method: Wrap) -> None:
        if any(s is scaler for s in self.scalers):
            return
        self.scalers.append(scaler)
        wrap_method(scaler, "scale", lambda call, *a, **k: self._around_scale(scaler, call, a, k))
        wrap_method(scaler, "unscale_", self._around_unscale)
        wrap_method(scaler, "step", self._around_step)
        wrap_method(scaler, "update", self._around_update)

    def _around_scale(
        self, scaler: Any, call: Callable[..., Any], args: tuple, kwargs: dict
    ) -> Any:
        result = call(*args, **kwargs)
        if self.core.stopped or not scaler.is_enabled():
            return result  # a disabled scaler (enabled=use_amp, bf16) returns the loss as is
        with self.core.guard:
            scaled = self.scaled
            for tensor in _tensors(result):
                key = id(tensor)
                scaled[key] = weakref.ref(tensor, lambda _, key=key: scaled.pop(key, None))
        return result

    def _around_unscale(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        core = self.core
        o = None
        if not core.stopped:
            with core.guard:
                o = self.optimizers.watch_for(arg(args, kwargs, 0, "optimizer"))
                if o is not None and not o.via_scaler:  # scaler.step's own is part of the step
                    site = user_site()
                    core.settle(o, site, at_backward=False)
                    core.feed(o, Move.UNSCALE, site, label="unscale")
        result = call(*args, **kwargs)
        if o is not None and not core.stopped:
            with core.guard:
                core.refresh_rep(o)
        return result

    def _around_step(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        core = self.core
        o = None if core.stopped else self.optimizers.watch_for(arg(args, kwargs, 0, "optimizer"))
        if o is None:
            return call(*args, **kwargs)
        o.via_scaler = True
        o.step_ran = False
        try:
            result = call(*args, **kwargs)
        finally:
            o.via_scaler = False
        if not o.step_ran and not core.stopped:  # inf/NaN gradients: the scaler skipped it
            with core.guard:
                site = user_site()
                core.feed(o, Move.STEP, site, label="scaler.step(skipped)", via_scaler=True)
                self.optimizers.after_step(o, skipped=True)
        return result

    def _around_update(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        result = call(*args, **kwargs)
        core = self.core
        if core.stopped:
            return result
        with core.guard:
            site = user_site()
            for o in core.opts:
                if not o.retired:
                    core.feed(o, Move.SCALER_UPDATE, site, label="")
            core.trace.event("scaler.update")
        return result
