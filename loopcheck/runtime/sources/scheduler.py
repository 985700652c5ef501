"""SCHED_STEP moves: an LR scheduler's ``step`` wrapped per instance, counted for its optimizer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from loopcheck.protocol import Move
from loopcheck.runtime.core import Core
from loopcheck.runtime.sites import user_site
from loopcheck.runtime.sources import Wrap
from loopcheck.runtime.sources.optimizer import OptimizerEvents


class SchedulerEvents:
    """Turns scheduler steps into SCHED_STEP moves of the scheduler's optimizer."""

    def __init__(self, core: Core, optimizers: OptimizerEvents) -> None:
        self.core = core
        self.optimizers = optimizers

    def install_scheduler(self, scheduler: Any, wrap: Wrap) -> None:
        wrap(scheduler, "step", self._around(scheduler))

    def _around(self, scheduler: Any) -> Callable[..., Any]:
        core = self.core

        def around(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            if not core.stopped:
                with core.guard:
                    o = self.optimizers.watch_for(getattr(scheduler, "optimizer", None))
                    if o is not None:
                        core.feed(o, Move.SCHED_STEP, user_site(), label="sched")
            return call(*args, **kwargs)

        return around
