"""What every rule is: a code, a name, a documented docstring and a question to the model."""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from loopcheck.diagnostic import Span

if TYPE_CHECKING:
    from loopcheck.static.model import FileModel, Record

SECTIONS = ("What it does", "Why is this bad?", "Example", "Use instead")

_HEADING = re.compile(r"^## (.+)$", re.MULTILINE)
_CODE_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


@dataclass(frozen=True)
class Finding:
    """What a rule reports: where, and a message in its own words. ``path`` is set when the
    place is in another linted file than the one analysed (a helper it calls). ``related`` is
    another place in the same file that the finding concerns, for its fix: the backward whose
    gradients a clear loses (LC102, LC108), the loop that should clear (LC101)."""

    span: Span
    message: str
    path: str | None = None
    related: Span | None = None


class Rule:
    """Base of every rule. Subclasses set ``code``, ``name`` and a docstring in the fixed
    sections (What it does / Why is this bad? / Example / Use instead) and implement ``check``,
    which asks the file's model questions; rules never walk the syntax tree themselves."""

    code: ClassVar[str]
    name: ClassVar[str]
    summary: ClassVar[str]
    default_enabled: ClassVar[bool] = True

    def check(self, model: FileModel) -> Iterable[Finding]:
        raise NotImplementedError

    @classmethod
    def doc(cls) -> str:
        return inspect.cleandoc(cls.__doc__ or "")

    @classmethod
    def sections(cls) -> dict[str, str]:
        """The docstring's sections by heading."""
        doc = cls.doc()
        marks = list(_HEADING.finditer(doc))
        out: dict[str, str] = {}
        for i, mark in enumerate(marks):
            end = marks[i + 1].start() if i + 1 < len(marks) else len(doc)
            out[mark.group(1).strip()] = doc[mark.end() : end].strip()
        return out

    @classmethod
    def example_code(cls, section: str) -> Iterator[str]:
        """The Python code blocks of one section (``Example`` or ``Use instead``)."""
        for block in _CODE_BLOCK.finditer(cls.sections().get(section, "")):
            yield block.group(1)


class ProtocolRule(Rule):
    """A rule the protocol decides: each violation of its code the static observer recorded
    is a finding, unless ``keep`` says the context excuses it. ``message`` is formatted with
    ``call``, the source of the call blamed."""

    message: ClassVar[str]

    def check(self, model: FileModel) -> Iterable[Finding]:
        for record in model.violations(self.code):
            if self.keep(model, record):
                yield self.finding(model, record, self.message.format(call=record.site.text))

    def finding(self, model: FileModel, record: Record, message: str) -> Finding:
        related = self.related(model, record)
        return Finding(record.site.span, message, record.site.path, related)

    def keep(self, model: FileModel, record: Record) -> bool:
        return True

    def related(self, model: FileModel, record: Record) -> Span | None:
        """The place a fix needs besides the finding's own: the earlier move it concerns."""
        cause = record.cause
        return cause.span if cause is not None and cause.path == record.site.path else None
