"""LC301 clip-without-unscale: insert ``scaler.unscale_(optimizer)`` just before the clip."""

from __future__ import annotations

from collections.abc import Iterator

import libcst as cst

from loopcheck.diagnostic import Diagnostic, Fix
from loopcheck.fix import syntax
from loopcheck.fix._base import Fixer
from loopcheck.fix.source import SourceFile


class ClipWithoutUnscale(Fixer):
    """The scaler and the optimizer come from the ``scaler.step(optimizer)`` that follows the
    clip in its block, or after the ``if``/``with`` holding the clip (an optional clip is
    unscaled only when it runs), within the same loop or function; the receiver must scale a
    loss in that function. Certain when exactly one such step follows."""

    code = "LC301"
    summary = "inserts `scaler.unscale_(optimizer)` just before the clip"

    def candidates(self, source: SourceFile, finding: Diagnostic) -> Iterator[Fix]:
        clip = source.flagged_statement(finding)
        if clip is None or source.block_of(clip) is None:
            return
        scope = source.scope_of(clip)
        pairs = {
            pair
            for stmt in _following(source, clip)
            for pair in syntax.scaler_steps(stmt)
            if syntax.scales_with(scope, pair[0])
        }
        if len(pairs) != 1:
            return
        ((scaler, optimizer),) = pairs
        unscale = f"{scaler}.unscale_({optimizer})"
        edit = source.insert_before(clip, source.statement_text(source.indent(clip), unscale))
        yield Fix(f"Insert `{unscale}` before the clip", (edit,))


def _following(source: SourceFile, stmt: cst.BaseStatement) -> list[cst.BaseStatement]:
    """The statements after ``stmt`` in its block, then after each ``if``, ``with`` or ``try``
    around it, up to the enclosing loop or function."""
    found: list[cst.BaseStatement] = []
    current: cst.BaseStatement | None = stmt
    while current is not None:
        block = source.block_of(current)
        if block is None:
            break
        found.extend(block.after)
        owner = source.parent(block.owner)
        if isinstance(owner, cst.Else):  # the ``else`` of an ``if``
            owner = source.parent(owner)
        if not isinstance(owner, (cst.If, cst.With, cst.Try)):
            break
        current = owner
    return found
