"""LC106 clip-after-step: move the clip to just before the step it follows."""

from __future__ import annotations

from collections.abc import Iterator

from loopcheck.diagnostic import Diagnostic, Fix
from loopcheck.fix._base import Fixer
from loopcheck.fix.clipping import clip_moves
from loopcheck.fix.source import SourceFile


class ClipAfterStep(Fixer):
    """Certain when the clip and the step are statements of one block with a backward before
    the step in that block (after ``scaler.unscale_`` when the step goes through a scaler), and
    nothing between them leaves early or shares a name with the clip (``norm = clip(...)`` used
    in between keeps the finding)."""

    code = "LC106"
    summary = "moves the clip to just before the step, in the same block"

    def candidates(self, source: SourceFile, finding: Diagnostic) -> Iterator[Fix]:
        return clip_moves(source, finding, later=False)
