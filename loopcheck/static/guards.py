"""Step guards read against their counter: with gradient accumulation, which micro-batch a
guarded ``step()`` really follows (``i % N == 0`` on a 0-based counter tested after the
backward steps after one micro-batch: LC204)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import libcst as cst

from loopcheck.static.callees import BACKWARD_CALLS
from loopcheck.static.conditions import Render, modular
from loopcheck.static.frames import Frame
from loopcheck.static.roles import Role
from loopcheck.static.syntax import (
    call_args,
    counter_of,
    cycled_range,
    dotted,
    is_increment,
    negated_if,
    range_length,
    without_not,
)
from loopcheck.static.tree import walk


@dataclass(frozen=True)
class Guard:
    """A test ``(counter + offset) % modulus == 0`` (``zero``) or ``!= 0`` (not ``zero``)."""

    counter: str
    modulus: str
    offset: int
    zero: bool


def read_guard(code: Render, test: cst.BaseExpression) -> Guard | None:
    """The guard a branch test makes; ``i % N == 0 or step == len(loader) - 1`` is the guard
    ``i % N == 0`` (the flush only adds the last batch)."""
    inner, negated = without_not(test)
    if type(inner) is cst.BooleanOperation and type(inner.operator) is cst.Or:
        sides = [inner.left, inner.right]
        rest = [side for side in sides if not _flush_operand(side)]
        if len(rest) != 1:
            return None
        test = negated_if(rest[0], negated)
    found = modular(code, test)
    if found is None:
        return None
    key, polarity, _ = found
    _, counter, modulus, offset = key.split("%", 3)
    return Guard(counter, modulus, int(offset), polarity)


def steps_in(frame: Frame, branch: cst.CSTNode | None) -> bool:
    """Whether a branch steps an optimizer (directly, through a GradScaler or an engine)."""
    if branch is None:
        return False
    for node in frame.ctx.method_calls(branch).get("step", ()):
        owner = frame.resolve(node.func.value)  # type: ignore[attr-defined]
        if owner is None:
            continue
        if owner.role in (Role.OPTIMIZER, Role.ENGINE):
            return True
        if owner.role is Role.SCALER and node.args:
            target = frame.resolve(node.args[0].value)
            if target is not None and target.role is Role.OPTIMIZER:
                return True
    return False


def backprops_in(branch: cst.CSTNode | None) -> bool:
    """Whether a branch runs a backward of its own (``g_loss.backward()``): its step applies
    what that backward computes, as a GAN's generator trained every ``n_critic`` iterations
    does, not gradients accumulated before the branch."""
    if branch is None:
        return False
    return any(
        type(node) is cst.Call
        and type(node.func) is cst.Attribute
        and node.func.attr.value in BACKWARD_CALLS
        for node in walk(branch)
    )


def counter_base(
    counter: str, loops: list[cst.CSTNode], guard_stmt: cst.CSTNode, before: set[int]
) -> int | None:
    """The counter's value at the guard in the first iteration: the start of ``range`` or
    ``enumerate``, or for a counter incremented by hand from 0, 1 when the increment comes
    before the guard. ``loops`` are the enclosing loops, innermost last; ``before`` the ids of
    the statements run before the guard in the loop's body. None when it is not known."""
    for loop in reversed(loops):
        if type(loop) not in (cst.For, cst.While):
            continue
        if type(loop) is cst.For and counter_of(loop) == counter:
            return _start(loop)
        increments = [
            node
            for node in walk(loop.body)
            if type(node) is cst.AugAssign
            and is_increment(node)
            and type(node.target) is cst.Name
            and node.target.value == counter
        ]
        if increments:
            if any(id(node) in before for node in increments):
                return 1
            return 0
    return None


def loop_start(loop: cst.CSTNode) -> int | None:
    """The first value of a ``range`` or ``enumerate`` loop's counter, when it is a literal."""
    if type(loop) is cst.For and counter_of(loop) is not None:
        return _start(loop)
    return None


def _start(loop: cst.For) -> int | None:
    assert type(loop.iter) is cst.Call
    func = dotted(loop.iter.func)
    positional, keywords = call_args(loop.iter)
    start: cst.BaseExpression | None = None
    if func == "range":
        start = positional[0] if len(positional) >= 2 else None
    elif func == "enumerate":
        start = keywords.get("start") or (positional[1] if len(positional) > 1 else None)
    elif func == "zip":
        cycled = cycled_range(loop)
        found = range_length(cycled[1]) if cycled is not None else None
        return found[1] if found is not None else None
    if start is None:
        return 0
    if type(start) is cst.Integer:
        return int(start.evaluated_value)
    return None


def off_by_one(guard: Guard, base: int, steps_when_zero: bool, steps_otherwise: bool) -> bool:
    """Tested after the backward of the micro-batch the counter numbers, a step belongs where
    ``(counter + 1 - base) % N == 0``: any other offset, or a step in the branch taken on the
    other N-1 micro-batches, is off by one."""
    if steps_otherwise:
        return True
    return steps_when_zero and guard.offset != 1 - base


def flushes(test: cst.BaseExpression) -> bool:
    """A guard that also steps at the end of the data: ``... or step + 1 == len(loader)``,
    ``... or is_last_batch``."""
    if not (type(test) is cst.BooleanOperation and type(test.operator) is cst.Or):
        return False
    return _flush_operand(test)


def _flush_operand(expr: cst.BaseExpression) -> bool:
    """Whether a test mentions the end of the data (``len(loader)``, ``last_batch``)."""
    for node in walk(expr):
        if type(node) is cst.Call and dotted(node.func) == "len":
            return True
        if type(node) is cst.Name and _END_OF_DATA.search(node.value):
            return True
    return False


_END_OF_DATA = re.compile(r"(?i)(^|_)(last|end|final)(_|$)")  # ``is_last_batch``, ``epoch_end``


def deepspeed_side(test: cst.BaseExpression) -> bool | None:
    """Which side of a branch on whether Accelerate runs DeepSpeed is the DeepSpeed one: True
    for the body (``accelerator.state.deepspeed_plugin is not None``, ``distributed_type ==
    DistributedType.DEEPSPEED``), False for the else side (``deepspeed_plugin is None``),
    None for any other test. There the engine steps and clears inside
    ``accelerator.backward``: a step the code skips is not missing."""
    inner, negated = without_not(test)
    side: bool | None = None
    if type(inner) is cst.Attribute and inner.attr.value == "deepspeed_plugin":
        side = True
    elif type(inner) is cst.Comparison and len(inner.comparisons) == 1:
        left, comp = inner.left, inner.comparisons[0]
        op = type(comp.operator)
        if type(left) is cst.Attribute and left.attr.value == "deepspeed_plugin":
            if dotted(comp.comparator) == "None" and op in (cst.Is, cst.IsNot):
                side = op is cst.IsNot
        elif type(comp.comparator) is cst.Attribute and comp.comparator.attr.value == "DEEPSPEED":
            if op in (cst.Equal, cst.NotEqual):
                side = op is cst.Equal
    if side is None:
        return None
    return not side if negated else side
