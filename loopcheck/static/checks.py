"""Checks the walk makes besides the protocol's: step guards read against their counter
(LC204) and tensors accumulated across iterations with their graph (LC501)."""

from __future__ import annotations

import re
from collections.abc import Iterable

import libcst as cst

from loopcheck.protocol import Grads
from loopcheck.static import guards, kept, tensors
from loopcheck.static.bodies import function_layout
from loopcheck.static.counters import counter_of
from loopcheck.static.frames import Frame, FrameStack
from loopcheck.static.index import FileContext
from loopcheck.static.model import FileModel, LoopSummary, Record, RootSummary
from loopcheck.static.paths import PathState
from loopcheck.static.syntax import (
    ends_with_continue,
    names_in,
    negated_if,
    without_not,
)
from loopcheck.static.tree import walk


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
        if type(without_not(stmt.test)[0]) is cst.Name and not _after_backward(states):
            return  # a flag read before any backward (the common case, cheaply ruled out)
        source = self.guard_source(stmt)
        if source is None:
            return
        expr, negated, ctx, frame, at = source
        loop = self.loop_stack[-1].node
        guard = guards.read_guard(
            ctx.code,
            negated_if(expr, negated),
            lambda counter: guards.wrap_modulus(ctx.code, loop, counter),
        )
        if guard is None:
            return
        other = stmt.orelse.body if type(stmt.orelse) is cst.Else else stmt.orelse
        body_steps = guards.steps_in(self.frame, stmt.body)
        block = stmt.body
        last = block.body[-1] if type(block) is cst.IndentedBlock and block.body else block
        if other is None and ends_with_continue(last):
            # ``if i % n != 0: continue`` then ``opt.step()``: the rest of the block is the
            # other branch
            block, index, _ = function_layout(self.frame).place.get(id(stmt), ((), 0, None))
            other_steps = any(guards.steps_in(self.frame, later) for later in block[index + 1 :])
        else:
            other_steps = guards.steps_in(self.frame, other)
        when_zero, otherwise = (
            (body_steps, other_steps) if guard.zero else (other_steps, body_steps)
        )
        if not (when_zero or otherwise) or (when_zero and otherwise):
            return  # steps on no branch, or on both: not an accumulation guard
        stepping = stmt.body if body_steps else other
        if self.ctx.remember("backprops", stepping, lambda: guards.backprops_in(stepping)):
            return  # the branch backpropagates what it steps: an update every N iterations
        if not _after_backward(states):
            return
        if _one_unless_deepspeed(guard.modulus, frame, at):
            return
        if _follows_counter(guard.modulus, guard.counter, frame, at):
            return
        # an inverted guard steps on N-1 of N micro-batches whatever the counter's base
        # (ignite's 1-based ``engine.state.iteration`` included)
        base = None if otherwise else self.counter_base(guard.counter, frame, at)
        if otherwise or (base is not None and guards.off_by_one(guard, base, when_zero, False)):
            at_branch = otherwise and _branch_contradicts_flag(stmt, bool(body_steps))
            site = self.ctx.site(stmt.test) if at_branch else ctx.site(expr)
            loop = self.loop_stack[-1]
            record = Record("LC204", site, guard.counter, loop, self.root, inverted=otherwise)
            self.model.add_record(record)

    def guard_source(
        self, stmt: cst.If
    ) -> tuple[cst.BaseExpression, bool, FileContext, Frame | None, cst.CSTNode | None] | None:
        """Where a branch's test comes from: the test itself, the value of the flag it names
        (``need_update = ...`` earlier in the function or in the enclosing one), or the
        caller's condition handed to the parameter it names (``update_grad=(i + 1) % n ==
        0``). With the frame and the statement that compute it (both None for a caller's
        condition, whose position in its loop is not known here)."""
        inner, negated = without_not(stmt.test)
        if type(inner) is not cst.Name:
            return stmt.test, False, self.ctx, self.frame, stmt
        name = inner.value
        if name in self.frame.conditions:
            expr, caller = self.frame.conditions[name]
            return expr, negated, caller, None, None
        frame: Frame | None = self.frame
        at: cst.CSTNode = stmt
        while frame is not None and frame.func is not None:
            layout = function_layout(frame)
            defs = layout.reaching(name, at)  # type: ignore[arg-type]
            if defs is not None:
                if len(defs) != 1 or defs[0].augmented or defs[0].loop_target:
                    return None
                return defs[0].value, negated, frame.ctx, frame, defs[0].statement
            parent = frame.parent
            if name in frame.params or parent is None:
                return None
            if id(frame.func) not in function_layout(parent).place:
                return None  # not a closure: a module-level name
            frame, at = parent, frame.func
        return None

    def counter_base(self, counter: str, frame: Frame | None, at: cst.CSTNode | None) -> int | None:
        """The counter's value where the guard is computed, in the first iteration (see
        :func:`guards.counter_base`); without a position only a loop's own counter is read."""
        if frame is None or at is None:
            for summary in reversed(self.loop_stack):
                node = summary.node
                if type(node) is cst.For and counter_of(node) == counter:
                    return guards.loop_start(node)
            return None
        layout = function_layout(frame)
        loops = [s.node for s in self.loop_stack if id(s.node) in layout.place]
        if type(frame.func) is cst.FunctionDef and self.loop_stack[0].node is frame.func:
            loops.insert(0, frame.func)
        return guards.counter_base(
            counter, loops, at, layout, lambda: _starts_at_zero(frame, counter)
        )

    def check_kept_graph(self, stmt: cst.CSTNode) -> None:
        """LC501: a loss summed or collected across iterations with its graph, never
        backpropagated (memory grows every step)."""
        if not self.loop_stack or not self.grad_enabled:
            return
        if tensors.unit_test(self.ctx, self.frame.func):
            return  # a few iterations whose losses are kept to be compared
        found = kept.kept_graph(self.frame, stmt, self.at)
        if found is None:
            return
        name, node = found
        frame = self.frame
        if name in frame.local_values and not any(
            id(s.node) in function_layout(frame).place for s in self.loop_stack
        ):
            # a total local to a function called in the loop, not summed in a loop of its
            # own: set anew on every call (DINOv2's ``loss_accumulator`` of one step's terms)
            return
        if _reset_every_iteration(self.loop_stack[-1].node, name):
            return  # set anew in the loop that adds to it: it holds one iteration's terms
        if name in tensors.backpropagated(self.ctx, self.frame.func) and (
            not name.isidentifier() or kept.reaches_a_backward(frame, name)
        ):
            return  # a differentiable total, backpropagated later
        if tensors.unrolls_graph(self.ctx, self.frame.func):
            return  # an unrolled inner loop: its graphs are kept to differentiate through
        record = Record("LC501", self.ctx.site(node), name, self.loop_stack[-1], self.root)
        self.model.add_record(record)


def _after_backward(states: set[PathState]) -> bool:
    """Whether some path has run this iteration's backward."""
    return any(
        o.fresh_this_iteration and o.grads in (Grads.FRESH, Grads.PILED)
        for s in states
        for _, o in s.opts
    )


def _reset_every_iteration(loop: cst.CSTNode, name: str) -> bool:
    """Whether a loop's body assigns ``name`` on every iteration (``losses = []`` among its
    own statements, not under a branch: a periodic ``total = 0`` after logging keeps adding)."""
    body = getattr(loop, "body", None)
    if type(body) is not cst.IndentedBlock:
        return False
    return any(
        type(stmt) is cst.SimpleStatementLine
        and any(
            type(small) is cst.Assign
            and any(type(t.target) is cst.Name and t.target.value == name for t in small.targets)
            and not any(type(n) is cst.Name and n.value == name for n in walk(small.value))
            for small in stmt.body
        )
        for stmt in body.body
    )


def _one_unless_deepspeed(modulus: str, frame: Frame | None, at: cst.CSTNode | None) -> bool:
    """Whether the guard's modulus is 1, or read from DeepSpeed's configuration, wherever it
    is assigned: with 1 nothing accumulates, and with DeepSpeed its engine does (a prepared
    optimizer's step acts only at the engine's boundary). No guard to get wrong either way."""
    if frame is None or at is None or not modulus.isidentifier():
        return False
    defs = function_layout(frame).reaching(modulus, at)  # type: ignore[arg-type]
    if not defs:
        return False
    for d in defs:
        if d.augmented or d.loop_target:
            return False
        if type(d.value) is cst.Integer and d.value.value == "1":
            continue
        if "deepspeed" not in frame.ctx.code(d.value).lower():
            return False
    return True


def _follows_counter(
    modulus: str, counter: str, frame: Frame | None, at: cst.CSTNode | None
) -> bool:
    """Whether the modulus is recomputed from the counter itself (YOLO's warm-up ramps
    ``accumulate = max(1, np.interp(ni, xi, [1, nbs / bs]).round())``, 1 at ``ni == 0``):
    the windows follow a schedule, and the first one is as long as it was meant to be."""
    if frame is None or at is None or not modulus.isidentifier() or not counter.isidentifier():
        return False
    defs = function_layout(frame).reaching(modulus, at)  # type: ignore[arg-type]
    return any(counter in names_in(d.value) for d in defs or ())


def _starts_at_zero(frame: Frame, counter: str) -> bool:
    """Whether a counter incremented by hand is set to 0 before its loop: ``step = 0``,
    ``self.step = 0`` in the class, ``state = {"iter_num": 0, ...}`` or
    ``TrainState(acc_step=0, ...)`` here or in the caller that handed ``state`` in."""
    if counter.isidentifier():
        return _zero_among(frame.local_values.get(counter, ()))
    head, _, rest = counter.partition(".")
    if head == "self" and rest.isidentifier() and frame.cls is not None:
        return _zero_among(value for _, value, _ in frame.cls.attribute_values(rest))
    if "[" in counter:
        head, _, key = counter[:-1].partition("[")
        field = key.strip("'\"")
    else:
        head, _, field = counter.rpartition(".")
    if not head.isidentifier() or not field.isidentifier():
        return False
    current: Frame | None = frame
    for _ in range(3):  # the function, its caller, theirs
        if current is None:
            return False
        for value in current.local_values.get(head, ()):
            if _zero_among(_field_values(value, field)):
                return True
        handed = current.handed
        if handed is None or head not in handed[2]:
            return False
        arg = handed[2][head]
        if type(arg) is not cst.Name:
            return False
        current, head = handed[0], arg.value  # type: ignore[assignment]
    return False


def _field_values(value: cst.BaseExpression, field: str) -> list[cst.BaseExpression]:
    """What ``value["field"]`` or ``value.field`` holds when ``value`` builds it: a dict
    literal's entry, a constructor's keyword."""
    if type(value) is cst.Dict:
        return [
            e.value
            for e in value.elements
            if type(e) is cst.DictElement
            and type(e.key) is cst.SimpleString
            and e.key.evaluated_value == field
        ]
    if type(value) is cst.Call:
        return [a.value for a in value.args if a.keyword is not None and a.keyword.value == field]
    return []


def _zero_among(values: Iterable[cst.BaseExpression]) -> bool:
    return any(type(v) is cst.Integer and v.value == "0" for v in values)


_HOLDS_BACK = re.compile(r"accumul|skip|no_sync", re.IGNORECASE)
_STEPS_NOW = re.compile(r"update|sync|step|boundary|apply", re.IGNORECASE)


def _branch_contradicts_flag(stmt: cst.If, body_steps: bool) -> bool:
    """An inverted guard read through a flag whose name says what it means: wrong where the
    branch is chosen when the step runs against that meaning (``if is_accumulating:``
    stepping), wrong where the flag is computed otherwise (``is_accumulating = i % n == 0``
    read by the usual ``if not is_accumulating:``)."""
    flag, negated = without_not(stmt.test)
    if type(flag) is not cst.Name:
        return False
    steps_when_set = body_steps != negated
    if _HOLDS_BACK.search(flag.value):
        return steps_when_set
    if _STEPS_NOW.search(flag.value):
        return not steps_when_set
    return False
