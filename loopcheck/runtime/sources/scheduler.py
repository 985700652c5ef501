"""SCHED_STEP moves: an LR scheduler's ``step``, counted for the scheduler's optimizer.

``step`` is wrapped where the scheduler's class defines it, for the watched schedulers only:
``LRScheduler.state_dict()`` returns the instance's ``__dict__``, where a wrapper would end up
in every checkpoint. A scheduler stepped while a scheduler is being constructed
(``SequentialLR`` undoing its children's first steps) or inside another one's step is not a step
of the loop.
"""

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
        self.schedulers: list[Any] = []
        self.constructing: Callable[[], bool] = lambda: False
        self._depth = 0  # scheduler steps in flight

    def install_scheduler(self, scheduler: Any, wrap_method: Wrap) -> None:
        if any(s is scheduler for s in self.schedulers):
            return
        self.schedulers.append(scheduler)
        wrap_method(scheduler, "step", self._around(scheduler))

    def _around(self, scheduler: Any) -> Callable[..., Any]:
        core = self.core

        def around(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            if not core.stopped and not self._depth and not self.constructing():
                with core.guard:
                    o = self.optimizers.watch_for(getattr(scheduler, "optimizer", None))
                    if o is not None:
                        core.feed(o, Move.SCHED_STEP, user_site(), label="sched")
            self._depth += 1
            try:
                return call(*args, **kwargs)
            finally:
                self._depth -= 1

        return around
