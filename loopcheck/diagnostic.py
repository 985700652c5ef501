"""The one thing every layer passes around: a finding at a place in a file."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import total_ordering

DOCS_URL = "https://github.com/loopcheck/loopcheck/blob/main/docs/rules/{code}.md"


@dataclass(frozen=True)
class Span:
    """A 1-based source range."""

    line: int
    column: int
    end_line: int
    end_column: int


@dataclass(frozen=True)
class Edit:
    """Replace the text from (line, column) up to (end_line, end_column), the end excluded, with
    ``content``; 1-based, columns in characters. An insertion starts and ends at one place."""

    content: str
    line: int
    column: int
    end_line: int
    end_column: int


@dataclass(frozen=True)
class Fix:
    """A change that removes a finding: what it does, in words, and the edits that do it.

    Only fixes that were checked (the file still parses and the finding is gone) are attached
    to a diagnostic, so every one is ``safe`` in ruff's sense."""

    message: str
    edits: tuple[Edit, ...]
    applicability: str = "safe"


@total_ordering
@dataclass(frozen=True)
class Diagnostic:
    """A finding. Lines and columns are 1-based; ``end_*`` close the flagged span.

    ``fix`` is the checked fix, when one exists; ``related`` is another place the finding
    concerns that a fix may need (see :class:`loopcheck.rules.Finding`). Neither takes part in
    equality or ordering. In a notebook, ``cell`` is the cell's number (from 1, every cell
    counted, as Jupyter and ruff number them) and the lines are the cell's own. Diagnostics
    sort by place: path, cell, line, column, then code."""

    path: str
    line: int
    column: int
    code: str
    message: str
    name: str = ""
    end_line: int = 0
    end_column: int = 0
    fix: Fix | None = field(default=None, compare=False)
    related: Span | None = field(default=None, compare=False)
    cell: int | None = None

    def _order(self) -> tuple:
        return (
            self.path,
            self.cell or 0,
            self.line,
            self.column,
            self.code,
            self.message,
            self.name,
            self.end_line,
            self.end_column,
        )

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Diagnostic):
            return NotImplemented
        return self._order() < other._order()

    @property
    def url(self) -> str:
        return DOCS_URL.format(code=self.code)
