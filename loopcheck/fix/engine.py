"""Applying fixes: each one checked by linting the fixed text, non-overlapping ones applied
together, the file linted again, pass after pass (as ruff does).

A fix is kept only when the fixed text still parses, the finding it targets is gone and no
finding of any registered rule appears that was not there before. Anything that goes wrong
while fixing leaves the file as it was: a fix is a convenience, never a risk.
"""

from __future__ import annotations

import ast
import codecs
import difflib
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from functools import cached_property

from loopcheck.api import lint_module, lint_source
from loopcheck.config import Config
from loopcheck.diagnostic import Diagnostic, Edit, Fix
from loopcheck.fix import get_fixer
from loopcheck.fix.source import SourceFile, split_lines
from loopcheck.noqa import remove_silenced
from loopcheck.rules import Rule
from loopcheck.runner import FileReport

MAX_PASSES = 10  # lint, fix, lint again: later passes fix what earlier fixes overlapped


# -- edits ------------------------------------------------------------------------------------


def apply_edits(text: str, edits: Iterable[Edit]) -> str:
    """``text`` with ``edits`` applied; the edits must not overlap. Positions past the end of
    the text stand for its end."""
    lines = split_lines(text)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))

    def offset(line: int, column: int) -> int:
        if line > len(lines):
            return len(text)
        return min(starts[line - 1] + column - 1, starts[line])

    spans = sorted(
        ((offset(e.line, e.column), offset(e.end_line, e.end_column), e.content) for e in edits),
        reverse=True,
    )
    for start, end, content in spans:
        text = text[:start] + content + text[end:]
    return text


def _extent(fix: Fix) -> tuple[tuple[int, int], tuple[int, int]]:
    return (
        min((e.line, e.column) for e in fix.edits),
        max((e.end_line, e.end_column) for e in fix.edits),
    )


def non_overlapping(fixes: Sequence[tuple[Diagnostic, Fix]]) -> list[tuple[Diagnostic, Fix]]:
    """The fixes to apply together, in file order: each one that starts after the previous one
    ends (fixes that touch wait for the next pass)."""
    chosen: list[tuple[Diagnostic, Fix]] = []
    end: tuple[int, int] | None = None
    for finding, fix in sorted(fixes, key=lambda item: _extent(item[1])):
        start, stop = _extent(fix)
        if end is None or start > end:
            chosen.append((finding, fix))
            end = stop
    return chosen


# -- checking ---------------------------------------------------------------------------------


def _flagged(d: Diagnostic, lines: list[str]) -> str:
    """The text a finding flags: with its code, what identifies it across edits."""
    if not 1 <= d.line <= d.end_line <= len(lines):
        return ""
    if d.line == d.end_line:
        return lines[d.line - 1][d.column - 1 : d.end_column - 1]
    head = lines[d.line - 1][d.column - 1 :]
    tail = lines[d.end_line - 1][: d.end_column - 1]
    return head + "".join(lines[d.line : d.end_line - 1]) + tail


class _Checker:
    """Judges fixes of one text against what linting it found."""

    def __init__(
        self,
        text: str,
        path: str,
        rules: tuple[type[Rule], ...],
        found: Sequence[Diagnostic] | None = None,
    ) -> None:
        self.text = text
        self.path = path
        self.rules = rules
        self.lines = split_lines(text)
        if found is not None:  # the caller linted this very text alone with ``rules``
            self.found = list(found)

    @cached_property
    def found(self) -> list[Diagnostic]:
        """What linting the text alone finds (only asked for when a fixer proposes
        something)."""
        if self.source is not None:
            return lint_module(self.source.module, self.path, self.rules)
        return lint_source(self.text, self.path, self.rules)

    @cached_property
    def _codes(self) -> Counter[str]:
        return Counter(d.code for d in self.found)

    @cached_property
    def _keys(self) -> Counter[tuple[str, str]]:
        return Counter((d.code, _flagged(d, self.lines)) for d in self.found)

    @cached_property
    def source(self) -> SourceFile | None:
        try:
            return SourceFile(self.text)
        except Exception:  # the linter reported what it thinks of this file already
            return None

    def fixed_text(self, fixes: Sequence[tuple[Diagnostic, Fix]]) -> str | None:
        """The text with ``fixes`` applied, if it parses, every targeted finding is gone and no
        new one appeared; else None."""
        try:
            new = apply_edits(self.text, (e for _, fix in fixes for e in fix.edits))
            with warnings.catch_warnings():  # the user's own SyntaxWarnings are not ours to print
                warnings.simplefilter("ignore")
                compile(new, self.path, "exec", ast.PyCF_ONLY_AST, dont_inherit=True)
            after = lint_source(new, self.path, self.rules)
        except Exception:  # SyntaxError, or a bug of ours: either way, no fix
            return None
        lines = split_lines(new)
        codes = Counter(d.code for d in after)
        keys = Counter((d.code, _flagged(d, lines)) for d in after)
        gone_codes = Counter(d.code for d, _ in fixes)
        gone_keys = Counter((d.code, _flagged(d, self.lines)) for d, _ in fixes)
        if any(codes[code] > self._codes[code] - gone_codes[code] for code in codes | gone_codes):
            return None
        if any(keys[key] > self._keys[key] - n for key, n in gone_keys.items()):
            return None
        return new

    def checked_fix(self, finding: Diagnostic) -> Fix | None:
        """The first fix proposed for ``finding`` that passes :meth:`fixed_text`."""
        fixer = get_fixer(finding.code)
        if fixer is None or self.source is None:
            return None
        try:
            for fix in fixer().candidates(self.source, finding):
                if self.fixed_text([(finding, fix)]) is not None:
                    return fix
        except Exception:  # a fixer that fails on odd code proposes nothing
            return None
        return None

    def with_fixes(self, diagnostics: Iterable[Diagnostic]) -> list[Diagnostic]:
        out = []
        for d in diagnostics:
            # a finding placed in another file (a helper of a linted project) is not ours to fix
            ours = d.path == self.path and get_fixer(d.code) is not None
            fix = self.checked_fix(d) if ours else None
            out.append(replace(d, fix=fix) if fix is not None else d)
        return out


# -- entry points -----------------------------------------------------------------------------


def attach_fixes(
    diagnostics: Sequence[Diagnostic],
    text: str,
    path: str,
    rules: tuple[type[Rule], ...],
    found: Sequence[Diagnostic] | None = None,
) -> list[Diagnostic]:
    """``diagnostics`` (found in ``text``) with the checked fix of each fixable one attached.
    ``rules`` judge the fixes: pass every registered rule, not only the selected ones.
    ``found``, when the caller has it, is what linting ``text`` alone with ``rules`` found,
    before any ``# noqa`` (it spares linting the text again)."""
    if not any(get_fixer(d.code) is not None for d in diagnostics):
        return list(diagnostics)
    return _Checker(text, path, rules, found).with_fixes(diagnostics)


def check_fix(
    text: str, path: str, rules: tuple[type[Rule], ...], finding: Diagnostic, fix: Fix
) -> str | None:
    """The text with ``fix`` applied when it parses, ``finding`` is gone and no finding of
    ``rules`` appeared; else None."""
    return _Checker(text, path, rules).fixed_text([(finding, fix)])


@dataclass(frozen=True)
class FixOutcome:
    """What fixing one text did: the fixed text, how many findings the applied fixes removed,
    and the findings that remain in it."""

    text: str
    fixed: int
    remaining: list[Diagnostic]


def fix_text(text: str, path: str, config: Config) -> FixOutcome:
    """Apply every checked fix of the findings ``config`` enables for ``path`` (``# noqa``
    respected), lint again, and repeat until nothing is left to fix or ``MAX_PASSES``."""
    codes = config.codes_for(path)
    fixed = 0
    for _ in range(MAX_PASSES):
        checker = _Checker(text, path, config.rules)
        selected = remove_silenced([d for d in checker.found if d.code in codes], text)
        found = checker.with_fixes(selected)
        chosen = non_overlapping([(d, d.fix) for d in found if d.fix is not None])
        if not chosen:
            return FixOutcome(text, fixed, sorted(found))
        new = checker.fixed_text(chosen)
        if new is None:  # fine one by one, not together: take the first, the rest next pass
            chosen = chosen[:1]
            new = checker.fixed_text(chosen)
        if new is None:
            return FixOutcome(text, fixed, sorted(found))
        text = new
        fixed += len(chosen)
    checker = _Checker(text, path, config.rules)
    selected = remove_silenced([d for d in checker.found if d.code in codes], text)
    return FixOutcome(text, fixed, sorted(checker.with_fixes(selected)))


@dataclass(frozen=True)
class FixedFile:
    """One file after fixing: its report (the remaining findings, in the fixed bytes), the
    text before and after, and how many findings the fixes removed."""

    report: FileReport
    before: str
    after: str
    fixed: int

    def diff(self) -> str:
        """A unified diff from the file as it is to the file fixed (empty when unchanged)."""
        lines = difflib.unified_diff(
            split_lines(self.before),
            split_lines(self.after),
            fromfile=self.report.path,
            tofile=self.report.path,
        )
        return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def fix_report(report: FileReport, config: Config) -> FixedFile | None:
    """Fix the file a report was made from; None when nothing in it has a fixer (or it is not
    Python text), and the report stands as it is."""
    before = _python_text(report)
    if before is None:
        return None
    outcome = fix_text(before, report.path, config)
    bom = codecs.BOM_UTF8 if report.source.startswith(codecs.BOM_UTF8) else b""
    data = bom + outcome.text.encode("utf-8") if outcome.fixed else report.source
    fixed_report = FileReport(report.path, data, tuple(outcome.remaining))
    return FixedFile(fixed_report, before, outcome.text, outcome.fixed)


def with_fixes(report: FileReport, config: Config) -> FileReport:
    """The report with the checked fix attached to each fixable finding."""
    text = _python_text(report)
    if text is None:
        return report
    found = attach_fixes(report.diagnostics, text, report.path, config.rules)
    return replace(report, diagnostics=tuple(found))


def _python_text(report: FileReport) -> str | None:
    return (
        None
        if report.source is None
        else python_text(report.source, report.path, report.diagnostics)
    )


def python_text(source: bytes | str, path: str, diagnostics: Iterable[Diagnostic]) -> str | None:
    """The text of a file, when it has a finding with a fixer. A notebook is JSON whose findings
    are placed in its cells, not in its bytes: it is never fixed."""
    if path.endswith(".ipynb"):
        return None
    if not any(get_fixer(d.code) for d in diagnostics):
        return None
    if isinstance(source, str):
        return source
    try:
        return source.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None
