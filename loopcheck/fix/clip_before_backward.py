"""LC107 clip-before-backward: move the clip to just before the step, after the backward."""

from __future__ import annotations

from collections.abc import Iterator

from loopcheck.diagnostic import Diagnostic, Fix
from loopcheck.fix._base import Fixer
from loopcheck.fix.clipping import clip_moves
from loopcheck.fix.source import SourceFile


class ClipBeforeBackward(Fixer):
    """Certain when a later statement of the clip's block steps, a backward comes between the
    clip and that step in the same block (a micro-batch loop that backpropagates counts), and
    nothing the clip jumps over leaves early or shares a name with it. With a loss scaler,
    the new place must follow ``scaler.unscale_``."""

    code = "LC107"
    summary = "moves the clip to just before the step that follows the backward, in the same block"

    def candidates(self, source: SourceFile, finding: Diagnostic) -> Iterator[Fix]:
        return clip_moves(source, finding, later=True)
