"""BACKWARD moves: which parameters each backward reached, and the loss it started from.

A post-accumulate-grad hook on every watched parameter records the backward's reach; the first
one of a backward queues a callback that queues another, which runs after DDP's all-reduce has
written the gradients: that is the backward's end, where each optimizer whose parameters got a
gradient gets one BACKWARD. ``torch.autograd.backward`` (which ``loss.backward()`` goes
through) is wrapped to see the loss: its call site, whether a GradScaler scaled it, whether it
was divided (LC201), whether it is finite (LC604). Parameters of no optimizer that a backward
reaches are orphan candidates, judged at the next step (LC602).
"""

from __future__ import annotations

import operator
import weakref
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import torch
from torch import Tensor

from loopcheck.protocol import Move
from loopcheck.runtime import checks
from loopcheck.runtime.core import Core, OptRecord
from loopcheck.runtime.sites import NO_SITE, Site, user_site
from loopcheck.runtime.sources import Wrap, arg

_INDEX = operator.attrgetter("index")


class GradientEvents:
    """Turns backward passes into BACKWARD moves for the optimizers they reach."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.scaled: dict[int, weakref.ref] = {}  # id -> tensor, of the losses scaler.scale made
        self._hits: list[int] = []  # parameters reached by the backward in flight
        self._open = False  # a callback waits for the end of the backward in flight
        self._depth = 0  # torch.autograd.backward calls in flight (reentrant checkpointing)
        self._context: tuple[Site, bool, bool | None] | None = None
        self._stack: ExitStack | None = None

    def install(self, stack: ExitStack, wrap: Wrap) -> None:
        self._stack = stack
        wrap(torch.autograd, "backward", self._around_backward)

    def hook_param(self, i: int) -> None:
        """Watch the gradients of parameter ``i`` of the watch's list."""
        param = self.core.params[i]
        if not param.requires_grad:
            return  # frozen: never gets a gradient, never an orphan
        hits = self._hits
        open_backward = self._open_backward

        def hook(_param: Tensor) -> None:
            if not self._open:
                open_backward()
            hits.append(i)

        assert self._stack is not None
        self._stack.callback(param.register_post_accumulate_grad_hook(hook).remove)

    # ----------------------------------------------------------------- the loss

    def _around_backward(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self._depth += 1
        if self._depth > 1:
            # a backward inside a backward (reentrant checkpointing): part of the outer one
            try:
                return call(*args, **kwargs)
            finally:
                self._depth -= 1
                if self._hits and not self._open:
                    self._open_backward()  # the outer backward's end is the end
        tensors = arg(args, kwargs, 0, "tensors")
        loss = tensors if isinstance(tensors, Tensor) else None
        if isinstance(tensors, (list, tuple)) and len(tensors) == 1:
            loss = tensors[0] if isinstance(tensors[0], Tensor) else None
        core = self.core
        try:
            if not core.stopped:
                with core.guard:
                    self._before_backward(loss)
            return call(*args, **kwargs)
        finally:
            self._depth -= 1
            self._context = None
            self._open = False
            self._hits.clear()  # only left over when the backward failed midway

    def _before_backward(self, loss: Tensor | None) -> None:
        core = self.core
        site = user_site()
        for o in core.opts:
            if not o.retired:
                core.settle(o, site, at_backward=True)
        scaled = False
        divided: bool | None = None
        if loss is not None:
            ref = self.scaled.get(id(loss))
            scaled = ref is not None and ref() is loss
            if any(site in o.sites for o in core.opts):  # accumulation: only then it matters
                divided = checks.divided(loss, scaled)
            if not scaled and loss.numel() == 1 and loss.is_floating_point():
                checks.finite_loss(core, loss, site)
        self._context = (site, scaled, divided)

    # ----------------------------------------------------------------- the backward's end

    def _open_backward(self) -> None:
        self._open = True
        torch.autograd.Variable._execution_engine.queue_callback(self._end_backward_soon)

    def _end_backward_soon(self) -> None:
        # queued behind the callbacks queued so far: DDP's, which writes the reduced gradients
        torch.autograd.Variable._execution_engine.queue_callback(self._end_backward)

    def _end_backward(self) -> None:
        self._open = False
        if self._depth > 1:
            return  # an inner backward ended: its gradients belong to the outer one
        if self.core.stopped:
            self._hits.clear()
            return
        with self.core.guard:
            self._backward_ended()

    def _backward_ended(self) -> None:
        core = self.core
        hits = self._hits[:]
        self._hits.clear()
        site, scaled, divided = self._context or (NO_SITE, False, None)
        self._context = None
        core.backward_count += 1
        owners = core.owners
        keys = set(map(owners.__getitem__, hits))
        reached = sorted({o for key in keys for o in key}, key=_INDEX)
        if reached:
            label = "backward"
            if core.multi:
                label += "[" + ",".join(str(o.index) for o in reached) + "]"
            core.trace.event(label)
        for o in reached:
            o.fresh.update(hits)
            first = next(i for i in hits if i in o.position_set)
            self._backward_for(o, first, site, scaled, divided)
        if () in keys:
            candidates = core.orphan_candidates
            for i in hits:
                if not owners[i]:
                    candidates.setdefault(i, site)

    def _backward_for(
        self, o: OptRecord, first: int, site: Site, scaled: bool, divided: bool | None
    ) -> None:
        # A backward repeated from the same line before the step is gradient accumulation:
        # only then does an undivided loss matter (two losses from two lines -- a GAN's real
        # and fake -- are meant to add up).
        repeated = site is not NO_SITE and site in o.sites
        o.sites.add(site)
        self.core.feed(
            o,
            Move.BACKWARD,
            site,
            label="",
            scaled=scaled,
            divided=divided if repeated else None,
        )
        o.backwards += 1
        o.had_grads = True
        o.last_backward = self.core.backward_count
        o.clipped_last = False
        self.core.note_gradients(o, first)
