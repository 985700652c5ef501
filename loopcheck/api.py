"""The public entry point of the linter: source text in, diagnostics out."""

from __future__ import annotations

import re

import libcst as cst

from loopcheck.diagnostic import Diagnostic
from loopcheck.rules import ALL_RULES, Rule

# A file that never mentions one of these cannot hold a training step worth checking.
_PREFILTER = re.compile(rb"backward|zero_grad|\.step\(|\bstep\(")


def _parse_error(path: str, line: int, column: int, message: str) -> Diagnostic:
    return Diagnostic(
        path=path,
        line=max(line, 1),
        column=max(column, 1),
        code="LC900",
        name="parse-error",
        message=message,
        end_line=max(line, 1),
        end_column=max(column, 1),
    )


def _decode(source: bytes, path: str) -> str | Diagnostic:
    if b"\x00" in source:
        return _parse_error(path, 1, 1, "file is binary (contains NUL bytes), not Python source")
    try:
        return source.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = source[: exc.start].count(b"\n") + 1
        return _parse_error(path, line, 1, f"file is not valid UTF-8: {exc.reason}")


def lint_source(
    source: str | bytes, path: str = "<stdin>", rules: tuple[type[Rule], ...] = ALL_RULES
) -> list[Diagnostic]:
    """Lint one file's text with ``rules`` (all by default); never raises on bad input.

    No configuration, no ``# noqa``: those are the caller's (see ``loopcheck.runner``).
    """
    raw = source.encode("utf-8") if isinstance(source, str) else source
    if not _PREFILTER.search(raw):
        return []
    text = _decode(raw, path)
    if isinstance(text, Diagnostic):
        return [text]
    try:
        module = cst.parse_module(text)
    except cst.ParserSyntaxError as exc:
        return [_parse_error(path, exc.raw_line, exc.raw_column + 1, f"syntax error: {exc.message}")]
    except RecursionError:
        return [_parse_error(path, 1, 1, "file is too deeply nested to parse")]
    from loopcheck.static import analyze

    try:
        model = analyze(module)
    except RecursionError:
        return [_parse_error(path, 1, 1, "file is too deeply nested to analyse")]
    found: set[Diagnostic] = set()
    for rule_class in rules:
        for finding in rule_class().check(model):
            span = finding.span
            found.add(
                Diagnostic(
                    path=path,
                    line=span.line,
                    column=span.column,
                    code=rule_class.code,
                    name=rule_class.name,
                    message=finding.message,
                    end_line=span.end_line,
                    end_column=span.end_column,
                )
            )
    return sorted(found)
