"""What every fixer is: the rule code it fixes, what its fix does, and the fixes it proposes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from loopcheck.diagnostic import Diagnostic, Fix
from loopcheck.fix.source import SourceFile


class Fixer:
    """Base of every fixer. Subclasses set ``code`` (the rule fixed) and ``summary`` (what the
    fix does, for ``loopcheck rule``) and implement ``candidates``: the fixes proposed for one
    finding, best first, none when no fix is certain from the code around it. The engine keeps
    the first candidate that leaves the file parsing and the finding gone."""

    code: ClassVar[str]
    summary: ClassVar[str]

    def candidates(self, source: SourceFile, finding: Diagnostic) -> Iterable[Fix]:
        raise NotImplementedError
