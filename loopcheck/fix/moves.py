"""Moving one statement within its block, when nothing it jumps over could notice the move."""

from __future__ import annotations

import libcst as cst

from loopcheck.diagnostic import Fix
from loopcheck.fix import syntax
from loopcheck.fix.source import SourceFile

MAX_ANCHORS = 2  # candidates tried per finding: the nearest step, then the next one


def move(
    source: SourceFile,
    stmt: cst.BaseStatement,
    anchor: cst.BaseStatement,
    *,
    after: bool,
    message: str,
) -> Fix | None:
    """Move ``stmt``, with its own comment lines, just before or just after ``anchor``, another
    statement of the same block. None when the move is not certain to keep the meaning of the
    code it jumps over: a statement that may leave the block early, define or import names,
    or share a name with ``stmt`` (one writing what the other reads)."""
    block = source.block_of(stmt)
    target = source.block_of(anchor)
    if block is None or target is None or block.owner is not target.owner:
        return None
    i, j = block.index, target.index
    if after:
        jumped = block.body[i + 1 : j + 1] if j > i else block.body[j + 1 : i]
    else:
        jumped = block.body[i + 1 : j] if j > i else block.body[j:i]
    if not jumped or syntax.defines(stmt):
        return None
    for other in jumped:
        if syntax.leaves_early(other) or syntax.defines(other):
            return None
        if syntax.clash(syntax.writes(stmt), syntax.reads(other)):
            return None
        if syntax.clash(syntax.writes(other), syntax.reads(stmt)):
            return None
    if syntax.leaves_early(stmt):
        return None
    text = source.lines_of(stmt)
    insert = source.insert_after(anchor, text) if after else source.insert_before(anchor, text)
    return Fix(message, (source.delete(stmt), insert))
