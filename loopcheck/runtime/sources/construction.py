"""Adoption at construction: optimizers, LR schedulers and GradScalers made inside the block.

For ``loopcheck.watch_all`` (and so ``loopcheck run`` and the pytest marker), the base classes'
``__init__`` (``torch.optim.Optimizer``, ``LRScheduler``, ``ReduceLROnPlateau``, which does not
call it, and ``torch.amp.GradScaler``) are wrapped while the block runs, for every instance
made, so that each object is watched from the moment it exists: the first iteration is checked
like the others. They are removed on exit like the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from loopcheck.runtime.core import Core
from loopcheck.runtime.sources import Wrap


class ConstructionEvents:
    """Hands each optimizer, scheduler and scaler constructed during the watch to ``adopt_*``."""

    def __init__(
        self,
        core: Core,
        adopt_optimizer: Callable[[torch.optim.Optimizer], object],
        adopt_scheduler: Callable[[Any], None],
        adopt_scaler: Callable[[Any], None],
    ) -> None:
        self.core = core
        self._adopt_optimizer = adopt_optimizer
        self._adopt_scheduler = adopt_scheduler
        self._adopt_scaler = adopt_scaler
        self.depth = 0  # constructions in flight: a scheduler built inside another one's

    def install(self, wrap: Wrap) -> None:
        wrap(torch.optim.Optimizer, "__init__", self._around(self._adopt_optimizer))
        wrap(LRScheduler, "__init__", self._around(self._adopt_scheduler))
        # ReduceLROnPlateau's own __init__ does not call LRScheduler's (adopting is idempotent)
        wrap(ReduceLROnPlateau, "__init__", self._around(self._adopt_scheduler))
        wrap(torch.amp.GradScaler, "__init__", self._around(self._adopt_scaler))

    def _around(self, adopt: Callable[[Any], object]) -> Callable[..., Any]:
        core = self.core

        def around(call: Callable[..., Any], instance: Any, *args: Any, **kwargs: Any) -> Any:
            self.depth += 1
            try:
                result = call(instance, *args, **kwargs)
            finally:
                self.depth -= 1
            if not core.stopped:
                with core.guard:
                    adopt(instance)
            return result

        return around
