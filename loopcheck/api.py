"""The public entry point of the linter: source text in, diagnostics out."""

from __future__ import annotations

import ast
import contextlib
import gc
import re
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

import libcst as cst

from loopcheck.diagnostic import Diagnostic
from loopcheck.rules import ALL_RULES, Rule

if TYPE_CHECKING:
    from loopcheck.static.project import Project

# A file that never mentions one of these cannot hold a training step worth checking.
# the library helpers that ``loopcheck.static.stubs`` models (they make the moves unseen)
_MODELLED = re.compile(rb"\b(NativeScaler|ApexScaler)\b")
_PREFILTER = re.compile(rb"backward|zero_grad|\.step\(|\bstep\(|\.eval\(\)|" + _MODELLED.pattern)


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


_DEEP = 100
_BRACKETS = re.compile(rb"[()\[\]{}]")


def _bracket_depth(raw: bytes) -> int:
    """The deepest bracket nesting, counted roughly (brackets in strings count too)."""
    depth = deepest = 0
    for match in _BRACKETS.finditer(raw):
        if match[0] in b"([{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth = max(depth - 1, 0)
    return deepest


def _compile(text: str, path: str) -> None:
    """Let Python judge the source; its warnings about odd but valid code are not ours."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compile(text, path, "exec", ast.PyCF_ONLY_AST, dont_inherit=True)


def _syntax_error(text: str, path: str, exc: cst.ParserSyntaxError) -> Diagnostic:
    """Locate and word a syntax error as Python itself does; libcst's own position is a
    fallback for the rare source Python accepts and libcst does not."""
    try:
        _compile(text, path)
    except SyntaxError as err:
        return _parse_error(path, err.lineno or 1, err.offset or 1, f"syntax error: {err.msg}")
    except (ValueError, RecursionError, MemoryError):
        pass
    where = re.search(r"error at (\d+):(\d+)", exc.message)
    line, column = (int(where[1]), int(where[2]) + 1) if where else (exc.raw_line, 1)
    return _parse_error(path, line, column, f"syntax error: {exc.message.splitlines()[0]}")


def _decode(source: bytes, path: str) -> str | Diagnostic:
    if b"\x00" in source:
        return _parse_error(path, 1, 1, "file is binary (contains NUL bytes), not Python source")
    try:
        return source.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = source[: exc.start].count(b"\n") + 1
        return _parse_error(path, line, 1, f"file is not valid UTF-8: {exc.reason}")


def lint_source(
    source: str | bytes,
    path: str = "<stdin>",
    rules: tuple[type[Rule], ...] = ALL_RULES,
    project: Project | None = None,
) -> list[Diagnostic]:
    """Lint one file's text with ``rules`` (all by default); never raises on bad input.

    With ``project`` (the files linted together), calls into those files are followed, and a
    finding may lie in one of them (the helper that misbehaves in this file's loop). No
    configuration, no ``# noqa``: those are the caller's (see ``loopcheck.runner``).
    """
    raw = source.encode("utf-8") if isinstance(source, str) else source
    if not _PREFILTER.search(raw) and not (
        project is not None and project.imports_helpers(raw, path)
    ):
        return []  # neither a move nor a helper of the linted files that may make one
    with _collection_paused():
        return _lint_text(raw, path, rules, project)


@contextlib.contextmanager
def _collection_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while one file is parsed and analysed.

    A parse builds a large tree of small objects and the analysis many short-lived ones; each
    collection that this triggers walks the whole live tree again, about a tenth of the lint's
    time. The trees hold no cycles and the file's cyclic garbage is small: it is collected by
    the next collection after the file. A collector that the caller disabled stays disabled.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _lint_text(
    raw: bytes, path: str, rules: tuple[type[Rule], ...], project: Project | None
) -> list[Diagnostic]:
    text = _decode(raw, path)
    if isinstance(text, Diagnostic):
        return [text]
    if _bracket_depth(raw) > _DEEP:
        # libcst's native parser can overflow its stack on pathological nesting that Python
        # itself refuses (more than 200 nested brackets): let Python judge such files first.
        try:
            _compile(text, path)
        except SyntaxError as err:
            return [
                _parse_error(path, err.lineno or 1, err.offset or 1, f"syntax error: {err.msg}")
            ]
        except (RecursionError, MemoryError, ValueError):
            return [_parse_error(path, 1, 1, "file is too deeply nested to parse")]
    from loopcheck.static.parsing import parse_module

    try:
        # a file loaded already for another's sake is not parsed again
        module = (project.parsed(path, text) if project is not None else None) or parse_module(text)
    except cst.ParserSyntaxError as exc:
        return [_syntax_error(text, path, exc)]
    except RecursionError:
        return [_parse_error(path, 1, 1, "file is too deeply nested to parse")]
    if project is None and _MODELLED.search(raw):
        # a file linted alone that uses a library helper the analysis has a model of: the
        # model is read as if it were linted with it
        from loopcheck.static import Project

        project = Project([path])
        project.begin(path)
    return lint_module(module, path, rules, project, text)


def lint_module(
    module: cst.Module,
    path: str = "<stdin>",
    rules: tuple[type[Rule], ...] = ALL_RULES,
    project: Project | None = None,
    source: str | None = None,
) -> list[Diagnostic]:
    """:func:`lint_source` of a file that libcst has parsed already (checking a fix lints the
    tree the fixers read instead of parsing the same text again); ``source``: the text it was
    parsed from, when the caller has it (locating findings is then cheaper)."""
    from loopcheck.static import analyze, stubs

    try:
        model = analyze(module, path, project, source)
    except RecursionError:
        return [_parse_error(path, 1, 1, "file is too deeply nested to analyse")]
    found: set[Diagnostic] = set()
    for rule_class in rules:
        for finding in rule_class().check(model):
            if finding.path and stubs.is_model(finding.path):
                continue  # inside a library model: what it exposes is reported at the caller
            span = finding.span
            found.add(
                Diagnostic(
                    path=finding.path or path,
                    line=span.line,
                    column=span.column,
                    code=rule_class.code,
                    name=rule_class.name,
                    message=finding.message,
                    end_line=span.end_line,
                    end_column=span.end_column,
                    related=finding.related,
                )
            )
    return sorted(found)
