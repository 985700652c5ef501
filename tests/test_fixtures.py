"""The linter on annotated fixture scripts: each `# error: LCxxx` comment is a finding expected on
its line; every other line must stay silent. Compares sets of (line, code)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from loopcheck.api import lint_source

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
_EXPECT = re.compile(r"#\s*error:\s*(LC\d{3}(?:\s*,\s*LC\d{3})*)")


def expected(source: str) -> set[tuple[int, str]]:
    found = set()
    for lineno, line in enumerate(source.splitlines(), start=1):
        match = _EXPECT.search(line)
        if match:
            found |= {(lineno, code.strip()) for code in match.group(1).split(",")}
    return found


def fixture_files(kind: str) -> list[Path]:
    return sorted((FIXTURES / kind).glob("*.py"))


def findings(path: Path) -> set[tuple[int, str]]:
    return {(d.line, d.code) for d in lint_source(path.read_bytes(), str(path))}


@pytest.mark.parametrize("path", fixture_files("clean"), ids=lambda p: p.stem)
def test_clean_fixture_is_silent(path: Path) -> None:
    assert expected(path.read_text()) == set(), "clean fixtures carry no expectations"
    assert findings(path) == set()


@pytest.mark.parametrize("path", fixture_files("bugs"), ids=lambda p: p.stem)
def test_bug_fixture_reports_exactly_its_bugs(path: Path) -> None:
    want = expected(path.read_text(errors="replace"))
    assert want, "a bug fixture names the findings it expects"
    assert findings(path) == want


def test_every_rule_has_a_bug_fixture() -> None:
    from loopcheck.rules import ALL_RULES

    covered = set()
    for path in fixture_files("bugs"):
        covered |= {code for _, code in expected(path.read_text(errors="replace"))}
    assert {r.code for r in ALL_RULES if r.default_enabled} <= covered
