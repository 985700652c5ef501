"""LC102 zero-grad-after-backward: move the clear to just after the step that follows it."""

from __future__ import annotations

from collections.abc import Iterator

import libcst as cst

from loopcheck.diagnostic import Diagnostic, Fix
from loopcheck.fix import syntax
from loopcheck.fix._base import Fixer
from loopcheck.fix.moves import MAX_ANCHORS, move
from loopcheck.fix.source import SourceFile


class ZeroGradAfterBackward(Fixer):
    """The clear, its step and the backward it undoes are in one function and the clear and
    the step in one block: after the step, the clear empties gradients that were just applied
    and the next backward starts from zero, on every path (inside an accumulation guard too).
    The step of the cleared optimizer is preferred; any other later step is a second choice,
    kept only if the finding goes away."""

    code = "LC102"
    summary = "moves the clear to just after the step that follows it in the same block"

    def candidates(self, source: SourceFile, finding: Diagnostic) -> Iterator[Fix]:
        clear = source.flagged_statement(finding)
        if clear is None or finding.related is None:
            return
        backward = source.call_at(finding.related)
        if backward is None or source.scope_of(backward) is not source.scope_of(clear):
            return  # the backward is a caller's: moving the clear would change other callers
        block = source.block_of(clear)
        if block is None:
            return
        optimizer = _cleared_optimizer(clear)
        later = [stmt for stmt in block.after if syntax.steps(stmt)]
        ours = [stmt for stmt in later if optimizer is not None and _steps(stmt, optimizer)]
        others = [stmt for stmt in later if stmt not in ours]
        what = source.code(clear.body[0] if isinstance(clear, cst.SimpleStatementLine) else clear)
        for anchor in [*ours, *others][:MAX_ANCHORS]:
            step = source.code(syntax.method_calls(anchor, "step")[0])
            fix = move(source, clear, anchor, after=True, message=f"Move `{what}` after `{step}`")
            if fix is not None:
                yield fix


def _cleared_optimizer(clear: cst.BaseStatement) -> str | None:
    calls = syntax.method_calls(clear, "zero_grad")
    return syntax.receiver(calls[0]) if len(calls) == 1 else None


def _steps(stmt: cst.BaseStatement, optimizer: str) -> bool:
    """Whether ``stmt`` steps ``optimizer``: ``optimizer.step()`` or ``scaler.step(optimizer)``."""
    if any(syntax.receiver(call) == optimizer for call in syntax.method_calls(stmt, "step")):
        return True
    return any(arg == optimizer for _, arg in syntax.scaler_steps(stmt))
