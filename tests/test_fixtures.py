"""The linter on annotated fixture scripts: each `# error: LCxxx` comment is a finding expected on
its line, at the column `tests/annotations.py` derives from the line (the flagged call's first
character); every other line must stay silent. Compares sets of (line, column, code)."""

from __future__ import annotations

from pathlib import Path

import pytest
from annotations import expected_codes as expected  # the name other fixture tests import
from annotations import expected_column, expected_findings

from loopcheck.api import lint_source

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def fixture_files(kind: str) -> list[Path]:
    return sorted((FIXTURES / kind).glob("*.py"))


def rules_for(path: Path) -> tuple:
    """The rules a fixture is linted with: the default set, as a user runs it, plus an
    off-by-default rule that a bug fixture is named after (``lc205_*``)."""
    from loopcheck.rules import ALL_RULES

    named = path.stem.split("_")[0].upper()
    return tuple(r for r in ALL_RULES if r.default_enabled or r.code == named)


def findings(path: Path) -> set[tuple[int, int, str]]:
    found = lint_source(path.read_bytes(), str(path), rules_for(path))
    return {(d.line, d.column, d.code) for d in found}


@pytest.mark.parametrize("path", fixture_files("clean"), ids=lambda p: p.stem)
def test_clean_fixture_is_silent(path: Path) -> None:
    assert expected(path.read_text()) == set(), "clean fixtures carry no expectations"
    assert findings(path) == set()


@pytest.mark.parametrize("path", fixture_files("bugs"), ids=lambda p: p.stem)
def test_bug_fixture_reports_exactly_its_bugs(path: Path) -> None:
    source = path.read_text(errors="replace")
    want = expected_findings(source)
    assert want, "a bug fixture names the findings it expects"
    assert findings(path) == want


def test_a_shifted_column_fails_the_harness() -> None:
    """The harness pins columns: the same finding one column off is not what a fixture expects."""
    source = (FIXTURES / "bugs" / "lc102_plain_loop.py").read_text()
    ((line, code),) = expected(source)
    column = expected_column(source, line, code)
    assert source.splitlines()[line - 1][column - 1 :].startswith("optimizer.zero_grad()")
    assert (line, column + 1, code) not in expected_findings(source)


def test_every_rule_has_a_bug_fixture() -> None:
    from loopcheck.rules import ALL_RULES

    covered = set()
    for path in fixture_files("bugs"):
        covered |= {code for _, code in expected(path.read_text(errors="replace"))}
    assert {r.code for r in ALL_RULES} <= covered
