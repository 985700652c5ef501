"""LC101 missing-zero-grad: clear the gradients at the top of the loop body."""

from __future__ import annotations

from collections.abc import Iterator

import libcst as cst

from loopcheck.diagnostic import Diagnostic, Fix
from loopcheck.fix import syntax
from loopcheck.fix._base import Fixer
from loopcheck.fix.source import SourceFile


class MissingZeroGrad(Fixer):
    """Certain when the loop the analysis blames (``related``: it is given only when the loop
    steps one optimizer, in one place) holds the backward and the step itself, the step is a
    statement of the loop body (no accumulation guard around it), no inner loop backpropagates
    (no micro-batch loop) and no ``continue`` skips the step (no accumulation by skipping).
    Then every iteration makes one update from its own gradients, and clearing first thing in
    the body is what the loop lacks."""

    code = "LC101"
    summary = (
        "inserts `optimizer.zero_grad()` at the top of the loop body, when the loop steps one "
        "optimizer and does not accumulate"
    )

    def candidates(self, source: SourceFile, finding: Diagnostic) -> Iterator[Fix]:
        if finding.related is None:
            return
        loop = next(
            (n for n in source.nodes_at(finding.related) if isinstance(n, (cst.For, cst.While))),
            None,
        )
        call = source.call_at(finding)
        if loop is None or call is None or not isinstance(loop.body, cst.IndentedBlock):
            return
        step = source.statement_of(call)
        if step is None or source.parent(step) is not loop.body:
            return  # guarded or nested: the loop may step once per several iterations
        if not syntax.backprops(loop.body) or syntax.continues(loop):
            return
        if any(syntax.backprops(inner) for inner in _inner_loops(loop)):
            return
        optimizer = _optimizer(source, call)
        if optimizer is None:
            return
        first = loop.body.body[0]
        clear = f"{optimizer}.zero_grad()"
        edit = source.insert_before(first, source.statement_text(source.indent(first), clear))
        yield Fix(f"Insert `{clear}` at the top of the loop body", (edit,))


def _inner_loops(loop: cst.For | cst.While) -> list[cst.CSTNode]:
    return [
        n
        for stmt in loop.body.body
        for n in syntax.nodes(stmt)
        if isinstance(n, (cst.For, cst.While))
    ]


def _optimizer(source: SourceFile, call: cst.Call) -> str | None:
    """The optimizer a step call steps: ``opt`` in ``opt.step()``, or in ``scaler.step(opt)``
    when that receiver scales losses in the same function."""
    if not isinstance(call.func, cst.Attribute) or call.func.attr.value != "step":
        return None
    if not call.args:
        return syntax.receiver(call)
    for scaler, optimizer in syntax.scaler_steps(call):
        if syntax.scales_with(source.scope_of(call), scaler):
            return optimizer
    return None
