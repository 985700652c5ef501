"""LC401 scheduler-before-optimizer: move the scheduler step to just after the optimizer's."""

from __future__ import annotations

from collections.abc import Iterator

import libcst as cst

from loopcheck.diagnostic import Diagnostic, Fix
from loopcheck.fix import syntax
from loopcheck.fix._base import Fixer
from loopcheck.fix.moves import move
from loopcheck.fix.source import SourceFile


class SchedulerBeforeOptimizer(Fixer):
    """Certain when the optimizer's step is the next step statement of the scheduler step's
    block (not under an ``if``: moving past a guard would change how often the scheduler
    steps) and nothing in between leaves early or shares a name with the scheduler call. With
    two schedulers before the step, the later one is fixed first and the other on the next
    pass, so they keep their order."""

    code = "LC401"
    summary = "moves the scheduler step to just after the optimizer step that follows it"

    def candidates(self, source: SourceFile, finding: Diagnostic) -> Iterator[Fix]:
        sched = source.flagged_statement(finding)
        block = source.block_of(sched) if sched is not None else None
        if sched is None or block is None:
            return
        what = source.code(syntax.method_calls(sched, "step")[0]) if syntax.steps(sched) else None
        if what is None:
            return
        anchor = next((stmt for stmt in block.after if syntax.steps(stmt)), None)
        if not isinstance(anchor, cst.SimpleStatementLine):
            return
        step = source.code(syntax.method_calls(anchor, "step")[0])
        fix = move(source, sched, anchor, after=True, message=f"Move `{what}` after `{step}`")
        if fix is not None:
            yield fix
