"""Reading the expectations written in fixtures: `# error: LCxxx` comments and the column each
expected finding must have. Shared by the fixture harness and the notebook tests."""

from __future__ import annotations

import ast
import re

_EXPECT = re.compile(r"#\s*error:\s*(LC\d{3}(?:\s*,\s*LC\d{3})*)")


def expected_codes(source: str) -> set[tuple[int, str]]:
    """(line, code) for each code of each `# error:` comment (several codes: `LC101, LC108`)."""
    found = set()
    for lineno, line in enumerate(source.splitlines(), start=1):
        match = _EXPECT.search(line)
        if match:
            found |= {(lineno, code.strip()) for code in match.group(1).split(",")}
    return found


def expected_column(source: str, line: int, code: str) -> int:
    """The 1-based column a finding on ``line`` must start at.

    The convention, taken from what every rule reports: a finding points at the first character
    of the flagged call, which is the start of the statement's expression: `optimizer.step()`
    at `optimizer`, `scaler.scale(loss).backward()` at `scaler` (the whole chain is one call),
    and in `norm = clip_grad_norm_(...)` at `clip_grad_norm_`, not at the assignment's target.
    That is the outermost call that starts on the line, i.e. the leftmost one. A line holding no
    call (`total += loss`) is flagged at its statement's first character, and so is every
    LC501 finding (the accumulation is the statement: `total += loss * x.size(0)` at `total`).
    A step guard (LC204) is flagged at its condition: `if step % accum == 0:` at `step`, and
    a guard computed into a flag or handed to a helper at that value (`need_update = last or
    i % n == 0` at `last`, `update_grad=i % n == 0` at `i`).
    LC900, a syntax error, is at the column CPython reports for it.
    """
    if code == "LC900":
        try:
            compile(source, "<fixture>", "exec", ast.PyCF_ONLY_AST)
        except SyntaxError as err:
            assert err.lineno == line, f"CPython reports the syntax error on line {err.lineno}"
            return err.offset or 1
        raise AssertionError("an LC900 fixture must not compile")
    tree = ast.parse(source)
    text = source.splitlines()[line - 1]
    if code == "LC204":
        tests = [n.test for n in ast.walk(tree) if isinstance(n, (ast.If, ast.While))]
        tests += [
            n.value
            for n in ast.walk(tree)
            if isinstance(n, (ast.Assign, ast.keyword))
            and isinstance(n.value, (ast.Compare, ast.BoolOp))
        ]
        starts = [t.col_offset for t in tests if t.lineno == line]
        assert starts, f"line {line} holds no guard: {text!r}"
        return len(text.encode("utf-8")[: min(starts)].decode("utf-8")) + 1
    starts = [
        node.col_offset
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and node.lineno == line and code != "LC501"
    ]
    if not starts:
        starts = [
            node.col_offset
            for node in ast.walk(tree)
            if isinstance(node, ast.stmt) and node.lineno == line
        ]
    assert starts, f"line {line} starts no call and no statement: {text!r}"
    # ast counts UTF-8 bytes; the linter counts characters.
    return len(text.encode("utf-8")[: min(starts)].decode("utf-8")) + 1


def expected_findings(source: str) -> set[tuple[int, int, str]]:
    """(line, column, code) of every finding the comments in ``source`` expect."""
    return {
        (line, expected_column(source, line, code), code) for line, code in expected_codes(source)
    }
