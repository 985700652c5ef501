"""Every rule documents itself, and its documentation's examples tell the truth."""

from __future__ import annotations

import re

import pytest

from loopcheck.api import lint_source
from loopcheck.rules import ALL_RULES, SECTIONS, Rule, get_rule


@pytest.mark.parametrize("rule", ALL_RULES, ids=lambda r: r.code)
def test_docstring_has_every_section(rule: type[Rule]) -> None:
    sections = rule.sections()
    assert list(sections) == list(SECTIONS)
    assert all(sections[name] for name in SECTIONS)
    assert re.fullmatch(r"LC\d{3}", rule.code)
    assert re.fullmatch(r"[a-z]+(-[a-z]+)*", rule.name)


@pytest.mark.parametrize("rule", ALL_RULES, ids=lambda r: r.code)
def test_example_fires_and_fix_is_silent(rule: type[Rule]) -> None:
    bad = list(rule.example_code("Example"))
    good = list(rule.example_code("Use instead"))
    assert bad and good
    for code in bad:
        assert rule.code in {d.code for d in lint_source(code, "example.py")}
    for code in good:
        assert lint_source(code, "fix.py") == []


def test_codes_and_names_are_unique_and_resolvable() -> None:
    assert len({r.code for r in ALL_RULES}) == len(ALL_RULES)
    assert len({r.name for r in ALL_RULES}) == len(ALL_RULES)
    for rule in ALL_RULES:
        assert get_rule(rule.code) is rule
        assert get_rule(rule.name) is rule
        assert get_rule(rule.code.lower()) is rule
    assert get_rule("LC999") is None


def test_generated_rule_pages_are_up_to_date() -> None:
    """docs/rules/ is generated from the docstrings: `python -m loopcheck.docs` rewrites it."""
    from pathlib import Path

    from loopcheck.docs import pages

    directory = Path(__file__).resolve().parent.parent / "docs" / "rules"
    for name, text in pages().items():
        path = directory / name
        assert path.exists(), f"{path} is missing: run python -m loopcheck.docs"
        assert path.read_text(encoding="utf-8") == text, (
            f"{path} is stale: python -m loopcheck.docs"
        )


def test_readme_rules_table_is_up_to_date() -> None:
    """The README's table lists every rule as its docstring says: `python -m loopcheck.docs`."""
    from pathlib import Path

    from loopcheck.docs import with_readme_table

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    assert with_readme_table(readme) == readme, "README.md is stale: python -m loopcheck.docs"
    for rule in ALL_RULES:
        assert f"[{rule.code}](docs/rules/{rule.code}.md)" in readme
