"""LC201 unscaled-accumulated-loss: divide the loss backpropagated by the accumulation count."""

from __future__ import annotations

from collections.abc import Iterator

import libcst as cst

from loopcheck.diagnostic import Diagnostic, Fix
from loopcheck.fix import syntax
from loopcheck.fix._base import Fixer
from loopcheck.fix.source import SourceFile

# expressions that bind tighter than ``/``: divided as they are written
_ATOMS = (cst.Name, cst.Attribute, cst.Call, cst.Subscript)


class UnscaledAccumulatedLoss(Fixer):
    """Certain when the code says how many micro-batches make one step, in one of the two
    shapes accumulation takes:

    * a step guard ``if (i + 1) % N == 0:`` around the step, in the loop that backpropagates:
      N is the modulus (a name, an attribute or a number);
    * a micro-batch loop ``for _ in range(N)`` or ``for m in micros`` holding the backward,
      with the step after it in the enclosing loop: N is ``N`` or ``len(micros)``.

    The loss given to backward is then divided by N where it is given, so the value logged
    or returned elsewhere stays the loss per micro-batch. Anything else (the backward in a
    helper, several moduli, micro-batches made on the fly) is left to the author."""

    code = "LC201"
    summary = (
        "divides the loss given to backward by the accumulation count, when a step guard's "
        "modulus or the micro-batch loop says what it is"
    )

    def candidates(self, source: SourceFile, finding: Diagnostic) -> Iterator[Fix]:
        call = source.call_at(finding)
        if call is None:
            return
        loss = _loss_of(call)
        loop = source.loop_of(call)
        if loss is None or loop is None:
            return
        count = _guard_count(source, loop) or _micro_batch_count(source, loop)
        if count is None:
            return
        # a parenthesised loss keeps its parentheses around the edit (positions exclude them)
        written = source.module.code_for_node(loss)
        if not isinstance(loss, _ATOMS) and not loss.lpar:
            written = f"({written})"
        divided = f"{written} / {count}"
        if not isinstance(source.parent(loss), cst.Arg) and not loss.lpar:
            divided = f"({divided})"  # the receiver of ``.backward()``
        edit = source.replace(loss, divided)
        yield Fix(f"Divide `{source.code(loss)}` by `{count}` before backward", (edit,))


def _loss_of(call: cst.Call) -> cst.BaseExpression | None:
    """The loss a backward call backpropagates: ``loss`` in ``loss.backward()``,
    ``scaler.scale(loss).backward()``, ``accelerator.backward(loss)``."""
    if not isinstance(call.func, cst.Attribute) or call.func.attr.value != "backward":
        return None
    args = syntax.positional(call)
    if args:
        return args[0] if len(call.args) >= 1 and call.args[0].keyword is None else None
    receiver = call.func.value
    if (
        isinstance(receiver, cst.Call)
        and isinstance(receiver.func, cst.Attribute)
        and receiver.func.attr.value == "scale"
        and len(receiver.args) == 1
        and receiver.args[0].keyword is None
    ):
        return receiver.args[0].value
    return receiver


def _guard_count(source: SourceFile, loop: cst.For | cst.While) -> str | None:
    """N of the one step guard ``... % N == 0`` in ``loop`` (not in its inner loops)."""
    found = set()
    for stmt in loop.body.body:
        for node in syntax.nodes(stmt):
            if isinstance(node, cst.If) and syntax.steps(node.body):
                found |= {source.module.code_for_node(n) for n in _moduli(node.test)}
    return found.pop() if len(found) == 1 else None


def _moduli(test: cst.BaseExpression) -> Iterator[cst.BaseExpression]:
    """The right operands of ``x % N`` compared with zero in a guard's test, when plain."""
    for node in syntax.nodes(test):
        if not isinstance(node, cst.Comparison) or len(node.comparisons) != 1:
            continue
        target = node.comparisons[0]
        left, right = node.left, target.comparator
        if not isinstance(target.operator, cst.Equal):
            continue
        if _is_zero(left):
            left, right = right, left
        if not _is_zero(right):
            continue
        if isinstance(left, cst.BinaryOperation) and isinstance(left.operator, cst.Modulo):
            if syntax.dotted(left.right) is not None or isinstance(left.right, cst.Integer):
                yield left.right


def _is_zero(expr: cst.BaseExpression) -> bool:
    return isinstance(expr, cst.Integer) and expr.value == "0"


def _micro_batch_count(source: SourceFile, inner: cst.For | cst.While) -> str | None:
    """N of a micro-batch loop ``inner`` whose enclosing loop steps after it."""
    if not isinstance(inner, cst.For) or syntax.steps(inner.body):
        return None
    outer = source.loop_of(inner)
    block = source.block_of(inner)
    if outer is None or block is None or not any(syntax.steps(s) for s in block.after):
        return None
    iterable = inner.iter
    if (
        isinstance(iterable, cst.Call)
        and syntax.dotted(iterable.func) == "range"
        and len(iterable.args) == 1
        and iterable.args[0].keyword is None
        and (
            syntax.dotted(iterable.args[0].value) is not None
            or isinstance(iterable.args[0].value, cst.Integer)
        )
    ):
        return source.module.code_for_node(iterable.args[0].value)
    name = syntax.dotted(iterable)
    if name is not None and not _rebinds(inner, name):
        return f"len({name})"
    return None


def _rebinds(loop: cst.For, name: str) -> bool:
    """Whether the loop's body assigns ``name`` (then ``len(name)`` would change under it)."""
    return name in syntax.writes(loop.body)
