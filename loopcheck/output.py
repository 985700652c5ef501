"""Writing diagnostics out: text with a code frame, concise, JSON, GitHub annotations, SARIF.

Every formatter takes the sorted diagnostics and returns the whole output as one string; the
text formatters read the offending line from ``sources`` (path → file bytes) when it is there.
Field names follow ruff's, so tools that read ruff's JSON or SARIF read ours. A finding in a
notebook is placed by cell as ruff places it: ``train.ipynb:cell 3:5:9:`` in text, ``"cell": 3``
in JSON (null elsewhere), the line and column being the cell's own; SARIF carries the cell in
the location's properties, and SARIF and GitHub messages start with ``cell 3:``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import PurePath
from typing import Any
from urllib.parse import quote

from loopcheck import __version__
from loopcheck.diagnostic import DOCS_URL, Diagnostic, Edit, Fix
from loopcheck.fix import get_fixer
from loopcheck.noqa import split_lines
from loopcheck.notebook import cell_lines
from loopcheck.rules import Rule

INFORMATION_URI = "https://github.com/loopcheck/loopcheck"
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"

Sources = Mapping[str, bytes | None]


def _end(d: Diagnostic) -> tuple[int, int]:
    """The (row, column) closing the span; a diagnostic without one ends where it starts."""
    if d.end_line < d.line or (d.end_line == d.line and d.end_column < d.column):
        return d.line, d.column
    return d.end_line, d.end_column


def _heading(d: Diagnostic) -> str:
    """``path:line:col: CODE message`` (``path:cell N:line:col: ...`` in a notebook) on one
    line, whatever the message holds; ``[*]`` before the message when ``--fix`` can fix it (as
    ruff marks it)."""
    message = re.sub(r"\s*[\r\n]+\s*", " ", d.message)
    cell = "" if d.cell is None else f"cell {d.cell}:"
    fixable = "[*] " if d.fix is not None else ""
    return f"{d.path}:{cell}{d.line}:{d.column}: {d.code} {fixable}{message}"


def _cell_message(d: Diagnostic) -> str:
    """The message, said to be in its cell when it is in a notebook."""
    return d.message if d.cell is None else f"cell {d.cell}: {d.message}"


# -- text ----------------------------------------------------------------------------------------


class _Lines:
    """Source lines by path (and by cell in a notebook), decoded once; binary or unreadable
    files have none."""

    def __init__(self, sources: Sources) -> None:
        self._sources = sources
        self._lines: dict[str, Sequence[str] | None] = {}
        self._cells: dict[str, Mapping[int, Sequence[str]]] = {}

    def get(self, path: str, line: int, cell: int | None = None) -> str | None:
        lines = self._file(path) if cell is None else self._cell(path, cell)
        if lines is None or not 1 <= line <= len(lines):
            return None
        return lines[line - 1]

    def _file(self, path: str) -> Sequence[str] | None:
        if path not in self._lines:
            raw = self._sources.get(path)
            usable = raw is not None and b"\x00" not in raw
            text = raw.decode("utf-8-sig", errors="replace") if usable else None
            self._lines[path] = split_lines(text) if text is not None else None
        return self._lines[path]

    def _cell(self, path: str, cell: int) -> Sequence[str] | None:
        if path not in self._cells:
            raw = self._sources.get(path)
            self._cells[path] = cell_lines(raw) if raw is not None else {}
        return self._cells[path].get(cell)


def _printable(text: str) -> str:
    """The line with control characters blanked, so a file cannot drive the terminal."""
    return "".join(ch if ch == "\t" or ch.isprintable() else " " for ch in text)


def code_frame(d: Diagnostic, line_text: str) -> list[str]:
    """The offending line with carets under the flagged span (to the end of the line when the
    span goes on to later lines)."""
    shown = _printable(line_text.rstrip())
    start = min(max(d.column, 1), len(shown) + 1)
    end_row, end_col = _end(d)
    end = end_col if end_row == d.line else len(shown) + 1
    width = max(min(end, len(shown) + 1) - start, 1)
    indent = "".join("\t" if ch == "\t" else " " for ch in shown[: start - 1])
    gutter = " " * len(str(d.line))
    return [
        f"{gutter} |",
        f"{d.line} | {shown}",
        f"{gutter} | {indent}{'^' * width}",
        f"{gutter} |",
    ]


def format_text(diagnostics: Sequence[Diagnostic], sources: Sources) -> str:
    """``path:line:col: CODE message``, then the line with a caret, a blank line between."""
    lines = _Lines(sources)
    blocks = []
    for d in diagnostics:
        block = [_heading(d)]
        line_text = lines.get(d.path, d.line, d.cell)
        if line_text is not None:
            block += code_frame(d, line_text)
        if d.fix is not None:
            block.append(f"  = help: {d.fix.message}")
        blocks.append("\n".join(block) + "\n")
    return "\n".join(blocks)


def format_concise(diagnostics: Sequence[Diagnostic], sources: Sources) -> str:
    return "".join(_heading(d) + "\n" for d in diagnostics)


def summary(diagnostics: Sequence[Diagnostic], fixed: int | None = None) -> str:
    """ruff's last lines: ``Found 3 errors.`` and how many ``--fix`` can fix, or after fixing
    ``Found 3 errors (2 fixed, 1 remaining).``, or ``All checks passed!``."""
    count = len(diagnostics)
    if fixed:
        total = count + fixed
        return (
            f"Found {total} error{'' if total == 1 else 's'} ({fixed} fixed, {count} remaining).\n"
        )
    if not count:
        return "All checks passed!\n"
    out = f"Found {count} error{'' if count == 1 else 's'}.\n"
    fixable = sum(d.fix is not None for d in diagnostics)
    if fixable:
        out += f"[*] {fixable} fixable with the `--fix` option.\n"
    return out


def format_statistics(diagnostics: Sequence[Diagnostic]) -> str:
    """One line per code: count, code and name, most frequent first."""
    rows = _statistics(diagnostics)
    width = max((len(str(row["count"])) for row in rows), default=1)
    return "".join(f"{row['count']:>{width}}\t{row['code']}\t{row['name']}\n" for row in rows)


def format_statistics_json(diagnostics: Sequence[Diagnostic]) -> str:
    return json.dumps(_statistics(diagnostics), indent=2) + "\n"


def _statistics(diagnostics: Sequence[Diagnostic]) -> list[dict[str, Any]]:
    counts = Counter(d.code for d in diagnostics)
    names = {d.code: d.name for d in diagnostics}
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [{"code": code, "name": names[code], "count": count} for code, count in ranked]


# -- machine-readable -----------------------------------------------------------------------------


def json_record(d: Diagnostic) -> dict[str, Any]:
    """One diagnostic with ruff's JSON field names."""
    end_row, end_col = _end(d)
    return {
        "code": d.code,
        "message": d.message,
        "filename": d.path,
        "cell": d.cell,
        "location": {"row": d.line, "column": d.column},
        "end_location": {"row": end_row, "column": end_col},
        "fix": None if d.fix is None else fix_record(d.fix),
        "url": d.url,
        "noqa_row": d.line,
    }


def fix_record(fix: Fix) -> dict[str, Any]:
    """A fix in ruff's JSON shape: applicability, message and edits with 1-based positions."""
    return {
        "applicability": fix.applicability,
        "message": fix.message,
        "edits": [
            {
                "content": edit.content,
                "location": {"row": edit.line, "column": edit.column},
                "end_location": {"row": edit.end_line, "column": edit.end_column},
            }
            for edit in fix.edits
        ],
    }


def format_json(diagnostics: Sequence[Diagnostic], sources: Sources) -> str:
    return json.dumps([json_record(d) for d in diagnostics], indent=2) + "\n"


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def format_github(diagnostics: Sequence[Diagnostic], sources: Sources) -> str:
    """GitHub Actions workflow commands: one ``::error`` annotation per diagnostic."""
    out = []
    for d in diagnostics:
        end_row, end_col = _end(d)
        properties = {
            "file": d.path,
            "line": d.line,
            "col": d.column,
            "endLine": end_row,
            "endColumn": end_col,
            "title": d.code,
        }
        props = ",".join(
            f"{key}={_escape_property(str(value))}" for key, value in properties.items()
        )
        out.append(f"::error {props}::{_escape_data(_cell_message(d))}\n")
    return "".join(out)


def _artifact_uri(path: str) -> str:
    pure = PurePath(path)
    if pure.is_absolute():
        return pure.as_uri()
    return quote(pure.as_posix())


def sarif_rule(rule: type[Rule]) -> dict[str, Any]:
    """A SARIF reportingDescriptor from the rule's registry entry and docstring."""
    doc = rule.doc()
    return {
        "id": rule.code,
        "name": rule.name,
        "shortDescription": {"text": rule.summary},
        "fullDescription": {"text": rule.sections().get("What it does", doc)},
        "help": {"text": doc, "markdown": doc},
        "helpUri": DOCS_URL.format(code=rule.code),
        "defaultConfiguration": {"enabled": rule.default_enabled, "level": "error"},
    }


def _sarif_result(d: Diagnostic, index: Mapping[str, int]) -> dict[str, Any]:
    end_row, end_col = _end(d)
    result: dict[str, Any] = {"ruleId": d.code}
    if d.code in index:
        result["ruleIndex"] = index[d.code]
    result["level"] = "error"
    result["message"] = {"text": _cell_message(d)}
    location: dict[str, Any] = {
        "physicalLocation": {
            "artifactLocation": {"uri": _artifact_uri(d.path)},
            "region": {
                "startLine": d.line,
                "startColumn": d.column,
                "endLine": end_row,
                "endColumn": end_col,
            },
        }
    }
    if d.cell is not None:
        location["properties"] = {"cell": d.cell}
    result["locations"] = [location]
    if d.fix is not None:
        result["fixes"] = [_sarif_fix(d.path, d.fix)]
    return result


def _sarif_fix(path: str, fix: Fix) -> dict[str, Any]:
    def replacement(edit: Edit) -> dict[str, Any]:
        region = {
            "startLine": edit.line,
            "startColumn": edit.column,
            "endLine": edit.end_line,
            "endColumn": edit.end_column,
        }
        return {"deletedRegion": region, "insertedContent": {"text": edit.content}}

    return {
        "description": {"text": fix.message},
        "artifactChanges": [
            {
                "artifactLocation": {"uri": _artifact_uri(path)},
                "replacements": [replacement(edit) for edit in fix.edits],
            }
        ],
    }


def format_sarif(diagnostics: Sequence[Diagnostic], rules: Iterable[type[Rule]]) -> str:
    """A SARIF 2.1.0 log with one run; the driver lists every registered rule."""
    ordered = sorted(rules, key=lambda rule: rule.code)
    index = {rule.code: i for i, rule in enumerate(ordered)}
    log = {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "loopcheck",
                        "version": __version__,
                        "informationUri": INFORMATION_URI,
                        "rules": [sarif_rule(rule) for rule in ordered],
                    }
                },
                "results": [_sarif_result(d, index) for d in diagnostics],
            }
        ],
    }
    return json.dumps(log, indent=2) + "\n"


Formatter = Callable[[Sequence[Diagnostic], Sources], str]

FORMATTERS: dict[str, Formatter] = {
    "text": format_text,
    "concise": format_concise,
    "json": format_json,
    "github": format_github,
}
FORMATS = (*FORMATTERS, "sarif")
HUMAN_FORMATS = ("text", "concise")


def render(
    diagnostics: Sequence[Diagnostic],
    output_format: str,
    *,
    sources: Sources | None = None,
    rules: Iterable[type[Rule]] = (),
) -> str:
    """The whole output for ``diagnostics`` in one of :data:`FORMATS` (no summary line)."""
    if output_format == "sarif":
        return format_sarif(diagnostics, rules)
    return FORMATTERS[output_format](diagnostics, sources or {})


# -- the rule catalog ------------------------------------------------------------------------------


def rule_record(rule: type[Rule]) -> dict[str, Any]:
    fixer = get_fixer(rule.code)
    return {
        "code": rule.code,
        "name": rule.name,
        "summary": rule.summary,
        "default_enabled": rule.default_enabled,
        "fixable": fixer is not None,
        "fix": fixer.summary if fixer is not None else None,
        "url": DOCS_URL.format(code=rule.code),
    }


def fix_availability(rule: type[Rule]) -> str:
    """One sentence on whether ``--fix`` can fix the rule's findings, and how."""
    fixer = get_fixer(rule.code)
    if fixer is None:
        return "Fix: none; the examples below show the change to make by hand."
    return f"Fix: available with `--fix` when it is certain: {fixer.summary}."


def format_rule(rule: type[Rule], output_format: str = "text") -> str:
    """One rule's documentation: its docstring under a ``# name (CODE)`` heading."""
    if output_format == "json":
        return json.dumps({**rule_record(rule), "explanation": rule.doc()}, indent=2) + "\n"
    off = "" if rule.default_enabled else "\n(off by default: select it by code to run it)\n"
    fix = fix_availability(rule)
    return f"# {rule.name} ({rule.code})\n\n{rule.summary}\n{off}{fix}\n\n{rule.doc()}\n"


def format_rules(rules: Iterable[type[Rule]], output_format: str = "text") -> str:
    """The catalog: code, name, summary, sorted by code; rules ``--fix`` can fix and rules off
    by default say so."""
    ordered = sorted(rules, key=lambda rule: rule.code)
    if output_format == "json":
        return json.dumps([rule_record(rule) for rule in ordered], indent=2) + "\n"
    width = max((len(rule.name) for rule in ordered), default=0)
    return "".join(
        f"{rule.code}  {rule.name:<{width}}  {rule.summary}"
        + ("" if get_fixer(rule.code) is None else " (fixable)")
        + ("" if rule.default_enabled else " (off by default)")
        + "\n"
        for rule in ordered
    )
