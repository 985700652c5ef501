"""Autofix: the fixer registry, one module per fixer, named after the rule it fixes.

A fixer proposes edits for one finding from the code around it (:mod:`loopcheck.fix.source`
finds the flagged statement, its block and its loop); :mod:`loopcheck.fix.engine` keeps a fix
only when the fixed file parses, the finding is gone and no other finding appears, applies
non-overlapping fixes together and lints again, pass after pass.

A new fixer is one module here and one line in ``ALL_FIXERS``. A fix that needs a fact only the
analysis knows gets it through ``Finding.related``, set by the rule (LC102: the backward whose
gradients are lost; LC101: the loop to clear in).
"""

from __future__ import annotations

from loopcheck.fix._base import Fixer
from loopcheck.fix.clip_after_step import ClipAfterStep
from loopcheck.fix.clip_before_backward import ClipBeforeBackward
from loopcheck.fix.clip_without_unscale import ClipWithoutUnscale
from loopcheck.fix.missing_zero_grad import MissingZeroGrad
from loopcheck.fix.scheduler_before_optimizer import SchedulerBeforeOptimizer
from loopcheck.fix.unscaled_accumulated_loss import UnscaledAccumulatedLoss
from loopcheck.fix.zero_grad_after_backward import ZeroGradAfterBackward

ALL_FIXERS: tuple[type[Fixer], ...] = (
    MissingZeroGrad,
    ZeroGradAfterBackward,
    ClipAfterStep,
    ClipBeforeBackward,
    ClipWithoutUnscale,
    SchedulerBeforeOptimizer,
    UnscaledAccumulatedLoss,
)

FIXERS_BY_CODE: dict[str, type[Fixer]] = {fixer.code: fixer for fixer in ALL_FIXERS}


def get_fixer(code: str) -> type[Fixer] | None:
    """The fixer of a rule code, or None when findings of that code are fixed by hand."""
    return FIXERS_BY_CODE.get(code)


__all__ = ["ALL_FIXERS", "FIXERS_BY_CODE", "Fixer", "get_fixer"]
