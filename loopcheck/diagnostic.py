"""The one thing every layer passes around: a finding at a place in a file."""

from __future__ import annotations

from dataclasses import dataclass

DOCS_URL = "https://github.com/loopcheck/loopcheck/blob/main/docs/rules/{code}.md"


@dataclass(frozen=True)
class Span:
    """A 1-based source range."""

    line: int
    column: int
    end_line: int
    end_column: int


@dataclass(frozen=True, order=True)
class Diagnostic:
    """A finding. Lines and columns are 1-based; ``end_*`` close the flagged span."""

    path: str
    line: int
    column: int
    code: str
    message: str
    name: str = ""
    end_line: int = 0
    end_column: int = 0
    fix: str | None = None

    @property
    def url(self) -> str:
        return DOCS_URL.format(code=self.code)
