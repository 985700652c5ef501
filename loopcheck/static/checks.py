"""Checks the walk makes besides the protocol's: step guards read against their counter
(LC204) and tensors accumulated across iterations with their graph (LC501)."""

from __future__ import annotations

import libcst as cst

from loopcheck.protocol import Grads
from loopcheck.static import guards, tensors
from loopcheck.static.dataflow import function_layout
from loopcheck.static.frames import FrameStack
from loopcheck.static.model import FileModel, LoopSummary, Record, RootSummary
from loopcheck.static.paths import PathState
from loopcheck.static.syntax import counter_of


class Checks(FrameStack):
    """The part of the interpreter that records these findings; the walk calls it."""

    model: FileModel
    loop_stack: list[LoopSummary]
    root: RootSummary | None
    at: cst.CSTNode | None

    @property
    def grad_enabled(self) -> bool:
        raise NotImplementedError

    def check_step_guard(self, stmt: cst.If, states: set[PathState]) -> None:
        """LC204: a step guard on a counter, tested after this iteration's backward, that
        steps after the wrong micro-batch (see :mod:`loopcheck.static.guards`)."""
        if not self.loop_stack:
            return
        guard = guards.read_guard(self.ctx.code, stmt.test)
        if guard is None:
            return
        other = stmt.orelse.body if type(stmt.orelse) is cst.Else else stmt.orelse
        body_steps = guards.steps_in(self.frame, stmt.body)
        other_steps = guards.steps_in(self.frame, other)
        when_zero, otherwise = (
            (body_steps, other_steps) if guard.zero else (other_steps, body_steps)
        )
        if not (when_zero or otherwise) or (when_zero and otherwise):
            return  # steps on no branch, or on both: not an accumulation guard
        after_backward = any(
            o.fresh_this_iteration and o.grads in (Grads.FRESH, Grads.PILED)
            for s in states
            for _, o in s.opts
        )
        if not after_backward:
            return
        layout = function_layout(self.frame)
        loops = [s.node for s in self.loop_stack if id(s.node) in layout.place]
        if type(self.frame.func) is cst.FunctionDef and self.loop_stack[0].node is self.frame.func:
            loops.insert(0, self.frame.func)
        base = guards.counter_base(guard.counter, loops, stmt, layout.before(stmt, loops))
        if base is None:
            return
        values = self.frame.local_values.get(guard.counter, ())
        manual = not any(type(n) is cst.For and counter_of(n) == guard.counter for n in loops)
        if manual and not any(type(v) is cst.Integer and v.value == "0" for v in values):
            return  # a counter incremented by hand from an unknown start
        if guards.off_by_one(guard, base, when_zero, otherwise):
            site = self.ctx.site(stmt.test)
            loop = self.loop_stack[-1]
            self.model.add_record(Record("LC204", site, guard.counter, loop, self.root))

    def check_kept_graph(self, stmt: cst.CSTNode) -> None:
        """LC501: a loss summed or collected across iterations with its graph, never
        backpropagated (memory grows every step)."""
        if not self.loop_stack or not self.grad_enabled:
            return
        found = tensors.kept_graph(self.frame, stmt, self.at)
        if found is None:
            return
        name, node = found
        if name in tensors.backpropagated(self.ctx, self.frame.func):
            return  # a differentiable total, backpropagated later
        if tensors.unrolls_graph(self.ctx, self.frame.func):
            return  # an unrolled inner loop: its graphs are kept to differentiate through
        record = Record("LC501", self.ctx.site(node), name, self.loop_stack[-1], self.root)
        self.model.add_record(record)
