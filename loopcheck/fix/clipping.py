"""Where a clip belongs: just before the step, after the backward and, with a loss scaler,
after ``scaler.unscale_``. Shared by the fixes of LC106 and LC107."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import libcst as cst

from loopcheck.diagnostic import Diagnostic, Fix
from loopcheck.fix import syntax
from loopcheck.fix.moves import MAX_ANCHORS, move
from loopcheck.fix.source import SourceFile


def clip_moves(source: SourceFile, finding: Diagnostic, *, later: bool) -> Iterator[Fix]:
    """Moves of the flagged clip to just before a step statement of its block: the nearest
    later ones (``later``, for a clip before backward: a backward must then lie in between) or
    the nearest earlier ones (for a clip after step). A step under an ``if`` is no anchor:
    clipping before the guard would clip every micro-batch."""
    clip = source.flagged_statement(finding)
    block = source.block_of(clip) if clip is not None else None
    if clip is None or block is None:
        return
    side = block.after if later else list(reversed(block.before))
    anchors = [stmt for stmt in side if _is_step(stmt)][:MAX_ANCHORS]
    what = source.code(clip.body[0] if isinstance(clip, cst.SimpleStatementLine) else clip)
    for anchor in anchors:
        index = next(i for i, stmt in enumerate(block.body) if stmt is anchor)
        before_step = [stmt for stmt in block.body[:index] if stmt is not clip]
        if not _ready_to_clip(source, before_step, anchor, need_backward=later):
            continue
        step = source.code(syntax.method_calls(anchor, "step")[0])
        fix = move(source, clip, anchor, after=False, message=f"Move `{what}` before `{step}`")
        if fix is not None:
            yield fix


def _is_step(stmt: cst.BaseStatement) -> bool:
    return isinstance(stmt, cst.SimpleStatementLine) and syntax.steps(stmt)


def _ready_to_clip(
    source: SourceFile,
    before_step: Sequence[cst.BaseStatement],
    anchor: cst.BaseStatement,
    *,
    need_backward: bool,
) -> bool:
    """Whether the gradients are ready to clip just before the step, read from the statements
    before it back to the nearest backward: with a scaler step, an ``unscale_`` must come after
    that backward (clipping scaled gradients is LC301); ``need_backward`` asks that the
    backward be in the block at all."""
    scope = source.scope_of(anchor)
    scaled = any(syntax.scales_with(scope, scaler) for scaler, _ in syntax.scaler_steps(anchor))
    unscaled = False
    for stmt in reversed(before_step):
        unscaled = unscaled or bool(syntax.method_calls(stmt, "unscale_"))
        if syntax.backprops(stmt):
            return unscaled or not scaled
    return not need_backward and (unscaled or not scaled)
