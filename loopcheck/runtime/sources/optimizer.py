"""STEP moves of optimizers: global step pre/post hooks, and the checks of a step.

The step hooks are global, so that an optimizer stepping through another one (SAM's base
optimizer, a wrapper) counts for the watched one; a ``step(closure)`` is judged when the closure
has run (LBFGS). At each step the checks of a step run on the gradients it reads: stale
gradients (LC601), clipping that missed (LC605), a step with no gradient ever (LC104), and after
it, whether it moved the parameters (LC603).
"""

from __future__ import annotations

import itertools
import operator
import weakref
from collections.abc import Callable
from contextlib import ExitStack

import torch
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from loopcheck.protocol import Move
from loopcheck.runtime import checks, dynamo
from loopcheck.runtime.core import GRAD, VERSION, Core, OptRecord, StepLimitReached, shown
from loopcheck.runtime.sites import Where, user_site
from loopcheck.runtime.sources import arg
from loopcheck.runtime.sources.clipping import ClipEvents

_is_compiling = torch.compiler.is_compiling

Adopt = Callable[[torch.optim.Optimizer], OptRecord]


class OptimizerEvents:
    """Turns optimizer steps and ``zero_grad`` calls into moves, and runs the step's checks."""

    def __init__(self, core: Core, clipping: ClipEvents, adopt: Adopt | None = None) -> None:
        self.core = core
        self.clipping = clipping
        self.adopt = adopt  # set: an optimizer seen stepping for the first time is watched

    def install(self, stack: ExitStack) -> None:
        stack.enter_context(register_optimizer_step_pre_hook(self._on_step_pre))
        stack.enter_context(register_optimizer_step_post_hook(self._on_step_post))

    def watch_for(self, opt: object) -> OptRecord | None:
        """The watched optimizer an optimizer's step counts for (adopting it when discovering)."""
        core = self.core
        o = core.by_opt.get(id(opt), False)
        if o is not False:
            return o
        core.seen.append(opt)
        ids = {id(p) for g in getattr(opt, "param_groups", ()) for p in g["params"]}
        # an optimizer stepping the parameters of a watched one: SAM's base optimizer
        o = next((w for w in core.opts if ids and ids <= w.ids), None)
        if o is None and self.adopt is not None and isinstance(opt, torch.optim.Optimizer):
            o = self.adopt(opt)
        core.by_opt[id(opt)] = o
        return o

    # ----------------------------------------------------------------- step

    def _on_step_pre(self, opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        if not _is_compiling() and not self.core.stopped:
            with self.core.guard:
                self._step_began(opt, args, kwargs)

    def _on_step_post(self, opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        if not _is_compiling() and not self.core.stopped:
            with self.core.guard:
                self._step_ended(opt)

    def _step_began(self, opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        core = self.core
        dynamo.keep_out()  # torch.compile may have been loaded since the watch began
        o = self.watch_for(opt)
        if o is None:
            return
        if o.stepping is not None and o.stepping is not opt:
            return  # an inner optimizer stepping inside the watched one's step()
        if core.max_steps is not None and o.steps >= core.max_steps:
            # its next step, with no iteration boundary seen since its last one
            raise StepLimitReached(core)
        if o.retired:
            core.revive(o)
        core.checks.poll()
        if core.orphan_candidates:
            checks.orphans(core)
        o.stepping = opt
        o.step_ran = False
        if not o.fused:
            o.before = list(map(VERSION, o.params))
        closure = arg(args, kwargs, 1, "closure")
        o.closure = closure is not None
        if not o.closure:
            self.judge_step(o)

    def _step_ended(self, opt: torch.optim.Optimizer) -> None:
        o = self.core.by_opt.get(id(opt))
        if o is None or o.stepping is not opt:
            return
        o.stepping = None
        if o.closure:
            o.closure = False
            self.judge_step(o)
        o.step_ran = True
        self.after_step(o, skipped=False)

    def judge_step(self, o: OptRecord) -> None:
        """The checks of a step, on the gradients it is about to read (or, with a closure, has
        just read)."""
        core = self.core
        site = user_site()
        where = Where(site, o.steps, o.index)
        core.settle(o, site, at_backward=False)
        rewritten = core.rewritten(o)
        if rewritten:
            core.feed(o, Move.GRAD_ACCESS, site, label="grads-edited")
        grads = o.grads = list(map(GRAD, o.params))
        has_grad = any(map(operator.is_not, grads, itertools.repeat(None)))
        found_stale = []
        if has_grad and not o.position_set <= o.fresh:
            found_stale = checks.stale(o, grads)
        if has_grad:
            checks.clip_effective(core, o, where, self.clipping.stray)
        elif o.backwards == 0:
            o.empty_steps += 1
        # gradients rescaled by hand after the last backward normalise an accumulated loss
        core.feed(
            o,
            Move.STEP,
            site,
            label="step" if not o.via_scaler else "scaler.step",
            via_scaler=o.via_scaler,
            ignore=("LC201",) if rewritten else (),
        )
        if found_stale:
            names = [core.name(p) for p in found_stale]
            core.emit("LC601", where, f"{len(found_stale)} parameter(s): {shown(names)}")
        if o.empty_steps == 2 and not has_grad:
            core.emit("LC104", where, f"{o.empty_steps} steps without a single gradient")

    def after_step(self, o: OptRecord, skipped: bool) -> None:
        """After ``o``'s step (``skipped``: a GradScaler skipped it): did it apply the
        gradients, and what the next step must not find again."""
        # the gradients the step read, as judge_step saw them (a skipped step was not judged)
        grads = o.grads if o.grads is not None and not skipped else list(map(GRAD, o.params))
        o.grads = None
        if not skipped and not o.fused:
            checks.applied(self.core, o, grads)
        o.applied = [None if g is None else (weakref.ref(g), g._version) for g in grads]
        o.had_grads = any(o.applied)
        o.fresh = set()
        o.sites.clear()
        o.clip = None
        o.clipped_last = False
        o.rep = None
        o.cleared_at = None
        core = self.core
        core.trace.close(o.index, o.steps)
        o.steps += 1
        if core.max_steps is not None and o.steps >= core.max_steps:
            core.limit_reached = True  # the next iteration does not begin
