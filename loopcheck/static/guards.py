"""Step guards read against their counter: with gradient accumulation, which micro-batch a
guarded ``step()`` really follows (``i % N == 0`` on a 0-based counter tested after the
backward steps after one micro-batch: LC204)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import libcst as cst

from loopcheck.static.callees import BACKWARD_CALLS
from loopcheck.static.conditions import Render
from loopcheck.static.counters import counted_iter, counter_of, cycled_range, range_length
from loopcheck.static.frames import Frame
from loopcheck.static.reaching import Layout
from loopcheck.static.roles import Role
from loopcheck.static.syntax import (
    call_args,
    dotted,
    literal_index,
    negated_if,
    without_not,
)
from loopcheck.static.tree import is_expression, walk


@dataclass(frozen=True)
class Guard:
    """A test ``(counter + offset) % modulus == 0`` (``zero``) or ``!= 0`` (not ``zero``).
    ``counter`` is the counter's key (see :func:`counter_key`)."""

    counter: str
    modulus: str
    offset: int
    zero: bool


Wraps = Callable[[str], "str | None"]


def read_guard(code: Render, test: cst.BaseExpression, wraps: Wraps | None = None) -> Guard | None:
    """The guard a branch test makes; ``i % N == 0 or step == len(loader) - 1`` is the guard
    ``i % N == 0`` (the flush only adds the last batch). ``wraps`` gives the modulus of a
    counter the loop keeps wrapped (``acc = (acc + 1) % N``): there ``acc == 0`` is a guard."""
    inner, negated = without_not(test)
    if type(inner) is cst.BooleanOperation and type(inner.operator) is cst.Or:
        sides = [inner.left, inner.right]
        rest = [side for side in sides if not _flush_operand(side)]
        if len(rest) == 2:
            # ``not args.grad_accumulation or step % args.grad_accumulation == 0``: with
            # accumulation off every iteration steps; with it on, the counter's guard decides
            found = [(side, _residue(code, side, wraps)) for side in rest]
            read = [(side, g) for side, g in found if g is not None]
            if len(read) == 1:
                other = next(side for side, g in found if g is None)
                if read[0][1].modulus in {code(n) for n in walk(other) if is_expression(n)}:
                    rest = [read[0][0]]
        if len(rest) != 1:
            return None
        test = negated_if(rest[0], negated)
    return _residue(code, test, wraps)


def _residue(code: Render, test: cst.BaseExpression, wraps: Wraps | None) -> Guard | None:
    """``(c + k) % N == r`` (``!=``, a bare truthy ``(c + k) % N``) on a counter ``c`` (a
    name, ``state["iter_num"]``, ``self.step``), or ``c == r`` on a wrapped counter."""
    test, negated = without_not(test)
    zero = not negated
    if type(test) is cst.BinaryOperation and type(test.operator) is cst.Modulo:
        left, remainder, zero = test, 0, not zero  # ``if (i + 1) % n:`` is ``!= 0``
    elif (
        type(test) is cst.Comparison
        and len(test.comparisons) == 1
        and type(test.comparisons[0].operator) in (cst.Equal, cst.NotEqual)
        and type(test.comparisons[0].comparator) is cst.Integer
    ):
        comp = test.comparisons[0]
        left, remainder = test.left, int(comp.comparator.evaluated_value)  # type: ignore[attr-defined]
        if type(comp.operator) is cst.NotEqual:
            zero = not zero
    else:
        return None
    if type(left) is cst.BinaryOperation and type(left.operator) is cst.Modulo:
        counter, offset = _shifted(left.left)
        key = counter_key(counter)
        modulus: str | None = code(left.right)
    else:
        counter, offset = left, 0
        key = counter_key(counter)
        modulus = wraps(key) if wraps is not None and key is not None else None
    if key is None or modulus is None:
        return None
    return Guard(key, modulus, offset - remainder, zero)


def _shifted(expr: cst.BaseExpression) -> tuple[cst.BaseExpression, int]:
    """``i + 1`` is ``(i, 1)``, ``i - 1`` is ``(i, -1)``, ``1 + i`` is ``(i, 1)``."""
    if type(expr) is not cst.BinaryOperation or type(expr.operator) not in (
        cst.Add,
        cst.Subtract,
    ):
        return expr, 0
    sign = -1 if type(expr.operator) is cst.Subtract else 1
    if type(expr.right) is cst.Integer:
        return expr.left, sign * int(expr.right.evaluated_value)
    if type(expr.left) is cst.Integer and sign == 1:
        return expr.right, int(expr.left.evaluated_value)
    return expr, 0


def counter_key(expr: cst.BaseExpression) -> str | None:
    """What names a counter however it is spelled: ``i``, ``self.step``,
    ``state['iter_num']`` (None for anything else: a call, an arbitrary index)."""
    head = dotted(expr)
    if head is not None:
        return head
    if type(expr) is cst.Subscript:
        base = dotted(expr.value)
        index = literal_index(expr)
        if base is not None and isinstance(index, str | int):
            return f"{base}[{index!r}]"
    return None


def wrap_modulus(code: Render, body: cst.CSTNode, counter: str) -> str | None:
    """N when ``body`` keeps ``counter`` wrapped: ``c = (c + 1) % N``, ``c = c % N``,
    ``c %= N``."""
    for node in walk(body):
        if type(node) is cst.AugAssign and type(node.operator) is cst.ModuloAssign:
            if counter_key(node.target) == counter:
                return code(node.value)
        elif type(node) is cst.Assign and len(node.targets) == 1:
            value = node.value
            if (
                counter_key(node.targets[0].target) == counter
                and type(value) is cst.BinaryOperation
                and type(value.operator) is cst.Modulo
                and counter_key(_shifted(value.left)[0]) == counter
            ):
                return code(value.right)
    return None


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
    counter: str,
    loops: list[cst.CSTNode],
    guard_stmt: cst.CSTNode,
    layout: Layout,
    starts_at_zero: Callable[[], bool],
) -> int | None:
    """The counter's value at the guard in the first iteration: the start of ``range`` or
    ``enumerate``; for a counter incremented by hand (``starts_at_zero`` says it starts at 0),
    1 when the increment comes before the guard; for a counter derived from the loop's
    (``ni = i + nb * epoch``), the loop counter's start. ``loops`` are the enclosing loops,
    innermost last. None when it is not known."""
    counters: dict[str, int | None] = {}
    for loop in reversed(loops):
        if type(loop) not in (cst.For, cst.While):
            continue
        found = loop_counter(loop, layout)  # type: ignore[arg-type]
        if found is not None:
            counters.setdefault(*found)
            if found[0] == counter:
                return found[1]
        increments = [node for node in walk(loop.body) if _increments(node, counter)]  # type: ignore[attr-defined]
        if increments:
            if not starts_at_zero():
                return None
            before = layout.before(guard_stmt, loops)
            return 1 if any(id(node) in before for node in increments) else 0
    return _derived_base(counter, loops, guard_stmt, layout, counters)


def _increments(node: cst.CSTNode, counter: str) -> bool:
    """``c += 1`` or ``c = (c + 1) % N``."""
    if type(node) is cst.AugAssign:
        return (
            type(node.operator) is cst.AddAssign
            and type(node.value) is cst.Integer
            and node.value.value == "1"
            and counter_key(node.target) == counter
        )
    if type(node) is cst.Assign and len(node.targets) == 1:
        value = node.value
        if counter_key(node.targets[0].target) != counter:
            return False
        if type(value) is not cst.BinaryOperation or type(value.operator) is not cst.Modulo:
            return False
        inner, shift = _shifted(value.left)
        return shift == 1 and counter_key(inner) == counter
    return False


def _derived_base(
    counter: str,
    loops: list[cst.CSTNode],
    guard_stmt: cst.CSTNode,
    layout: Layout,
    counters: dict[str, int | None],
) -> int | None:
    """The first value of ``ni = i + nb * epoch`` (set in the innermost loop from its
    counter): the counter's start plus the literals added. A product with an outer loop's
    counter counts as 0: the run's first iteration is its first epoch's."""
    if not counter.isidentifier() or not loops:
        return None
    defs = layout.reaching(counter, guard_stmt)
    if not defs or len(defs) != 1 or defs[0].augmented or defs[0].loop_target:
        return None
    inner = loops[-1]
    if id(defs[0].statement) not in {id(node) for node in walk(inner)}:
        return None
    base: int | None = None
    total = 0
    for term, sign in _terms(defs[0].value, 1):
        if type(term) is cst.Integer:
            total += sign * int(term.evaluated_value)
        elif type(term) is cst.Name and term.value in counters and base is None and sign == 1:
            base = counters[term.value]
            if base is None:
                return None
        elif not (
            type(term) is cst.BinaryOperation
            and type(term.operator) is cst.Multiply
            and any(
                type(side) is cst.Name and side.value in counters
                for side in (term.left, term.right)
            )
        ):
            return None
    return None if base is None else base + total


def _terms(expr: cst.BaseExpression, sign: int) -> list[tuple[cst.BaseExpression, int]]:
    """The terms of a sum, each with its sign."""
    if type(expr) is cst.BinaryOperation and type(expr.operator) in (cst.Add, cst.Subtract):
        right = -sign if type(expr.operator) is cst.Subtract else sign
        return _terms(expr.left, sign) + _terms(expr.right, right)
    return [(expr, sign)]


def loop_counter(loop: cst.For | cst.While, layout: Layout) -> tuple[str, int | None] | None:
    """A loop's counter and its first value (None when not a literal): ``for i in range(...)``,
    ``for i, x in enumerate(...)``, also through a progress bar (``tqdm(enumerate(loader))``,
    ``pbar = enumerate(loader); pbar = tqdm(pbar); for i, x in pbar``)."""
    if type(loop) is not cst.For:
        return None
    name = counter_of(loop)
    if name is not None:
        return name, loop_start(loop)
    target = loop.target
    if type(target) is not cst.Tuple or not target.elements:
        return None
    first = target.elements[0].value
    if type(first) is not cst.Name:
        return None
    start = _enumerated(loop.iter, loop, layout, 2)
    return (first.value, start[0]) if start is not None else None


def _enumerated(
    expr: cst.BaseExpression, at: cst.CSTNode, layout: Layout, depth: int
) -> tuple[int | None] | None:
    """``(start,)`` when ``expr`` is an ``enumerate`` call, maybe wrapped in a progress bar
    (a call whose first argument it is) or held by a name all of whose values are."""
    if type(expr) is cst.Call:
        positional, keywords = call_args(expr)
        if dotted(expr.func) == "enumerate":
            start = keywords.get("start") or (positional[1] if len(positional) > 1 else None)
            if start is None:
                return (0,)
            return (int(start.evaluated_value),) if type(start) is cst.Integer else (None,)
        if depth and positional:
            return _enumerated(positional[0], at, layout, depth - 1)
        return None
    if type(expr) is cst.Name and depth:
        defs = layout.reaching(expr.value, at)
        if not defs:
            return None
        found: set[tuple[int | None]] = set()
        for d in defs:
            if d.augmented or d.loop_target or type(d.value) is not cst.Call:
                return None
            positional, _ = call_args(d.value)
            if (
                dotted(d.value.func) != "enumerate"
                and positional
                and dotted(positional[0]) == expr.value
            ):
                continue  # ``pbar = tqdm(pbar)``: wraps what it already held
            start = _enumerated(d.value, d.statement, layout, depth - 1)
            if start is None:
                return None
            found.add(start)
        return found.pop() if len(found) == 1 else None
    return None


def loop_start(loop: cst.CSTNode) -> int | None:
    """The first value of a ``range`` or ``enumerate`` loop's counter, when it is a literal."""
    if type(loop) is cst.For and counter_of(loop) is not None:
        return _start(loop)
    return None


def _start(loop: cst.For) -> int | None:
    assert type(loop.iter) is cst.Call
    counted = counted_iter(loop.iter)
    func = dotted(counted.func)
    positional, keywords = call_args(counted)
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
