"""Which findings are reported: ``--select``/``--ignore``, ``noqa`` comments (parsed, placed on
the first line of a multi-line statement, never inside a string), rules that are off until
named, and per-file ignores."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest
from cli_harness import write

from loopcheck.config import Config
from loopcheck.noqa import Noqa, parse_noqa
from loopcheck.rules import Finding, Rule, Span
from loopcheck.runner import check_source, lint_file, lint_paths

# -- selection ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "reported"),
    [
        ([], True),
        (["--select", "LC9"], True),
        (["--select", "LC900"], True),
        (["--select", "ALL"], True),
        (["--ignore", "LC9"], False),
        (["--ignore", "lc90"], False),
        (["--ignore", "ALL"], False),
        (["--select", "LC9", "--ignore", "LC900"], False),
        (["--ignore", "LC9", "--extend-select", "LC900"], True),  # more specific wins
        (["--ignore", "LC900", "--extend-select", "LC900"], False),  # a tie: ignore wins
        (["--select", "LC900,LC9", "--select", "ALL"], True),
    ],
)
def test_select_and_ignore(run, argv: list[str], reported: bool) -> None:
    write("train.py")
    assert run(*argv, "train.py").code == (1 if reported else 0)


# -- noqa -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("comment", "silenced"),
    [
        ("# noqa", True),
        ("#noqa", True),
        ("# NOQA", True),
        ("# noqa:LC900", True),
        ("# noqa: lc900", True),
        ("# noqa: LC101, LC900", True),
        ("# noqa: LC101 LC900", True),
        ("# type: ignore  # noqa: LC900", True),
        ("# noqa: LC101", False),
        ("# noqa: LC90", False),  # codes, not prefixes
        ("# noqanything", False),
        ("# no qa", False),
    ],
)
def test_noqa_on_the_finding_line(run, comment: str, silenced: bool) -> None:
    write("train.py", f"x = = 1  # backward {comment}\n")
    assert run("train.py").code == (0 if silenced else 1)


def test_noqa_on_another_line_does_not_count(run) -> None:
    write("train.py", "# noqa\nx = = 1  # backward\n")
    assert run("train.py").code == 1


@pytest.mark.parametrize(
    ("comment", "expected"),
    [
        ("# noqa", Noqa()),
        ("# noqa:", Noqa()),  # no codes: read as blanket
        ("# noqa: see below", Noqa()),
        ("# noqa : LC102", Noqa(frozenset({"LC102"}))),
        ("# noqa: LC102,LC108# why", Noqa(frozenset({"LC102", "LC108"}))),
        ("# noqa: LC102 because of x", Noqa(frozenset({"LC102"}))),
        ("# noqa: LC102x", Noqa()),
        ("# a comment", None),
    ],
)
def test_parse_noqa(comment: str, expected: Noqa | None) -> None:
    assert parse_noqa(comment) == expected


def fixed_rule(rule_code: str, span: Span, on: bool = True) -> type[Rule]:
    """A rule that reports one finding at ``span`` in any file."""

    def check(self: Rule, model: object) -> Iterable[Finding]:
        return [Finding(span, f"{rule_code} here")]

    return type(
        f"Fixed{rule_code}",
        (Rule,),
        {
            "code": rule_code,
            "name": f"fixed-{rule_code.lower()}",
            "summary": "s",
            "default_enabled": on,
            "check": check,
        },
    )


MULTILINE = "opt.step(  {first}\n    closure,\n)  {last}\n"


@pytest.mark.parametrize(
    ("first", "last", "reported"),
    [
        ("", "", {"LC102", "LC101"}),
        ("# noqa: LC102", "", {"LC101"}),
        ("# noqa", "", set()),
        ("", "# noqa", {"LC102", "LC101"}),  # the statement's first line counts
    ],
)
def test_noqa_on_the_first_line_of_a_multiline_statement(
    first: str, last: str, reported: set[str]
) -> None:
    rules = (fixed_rule("LC102", Span(1, 1, 3, 2)), fixed_rule("LC101", Span(1, 5, 1, 9)))
    source = MULTILINE.format(first=first, last=last)
    found = check_source(source, "a.py", Config(rules=rules))
    assert {d.code for d in found} == reported


def test_noqa_inside_a_string_does_not_count() -> None:
    rules = (fixed_rule("LC102", Span(1, 1, 1, 5)),)
    found = check_source('opt.step("# noqa")\n', "a.py", Config(rules=rules))
    assert [d.code for d in found] == ["LC102"]


# -- runner: rules off by default, per-file-ignores -------------------------------------------


def test_rules_off_by_default_run_only_when_named(tmp_path: Path) -> None:
    from loopcheck.config import Selection

    rules = (fixed_rule("LC205", Span(1, 1, 1, 2), on=False), fixed_rule("LC101", Span(1, 1, 1, 2)))
    source = "opt.step()\n"

    def codes(*layers: Selection) -> set[str]:
        return {
            d.code for d in check_source(source, "a.py", Config(rules=rules, selections=layers))
        }

    assert codes() == {"LC101"}
    assert codes(Selection(select=("ALL",))) == {"LC101"}
    assert codes(Selection(extend_select=("LC205",))) == {"LC101", "LC205"}
    assert codes(Selection(select=("LC2",))) == {"LC205"}


def test_lint_file_and_lint_paths(tmp_path: Path) -> None:
    rules = (fixed_rule("LC102", Span(2, 1, 2, 3)),)
    write("src/a.py", "opt.step()\nx\n")
    write("src/b.py", "opt.step()\ny  # noqa: LC102\n")
    write("src/legacy/c.py", "opt.step()\nz\n")
    config = Config(root=tmp_path, rules=rules, per_file_ignores=(("legacy", ("LC1",)),))
    assert [d.path for d in lint_file(Path("src/a.py"), config)] == ["src/a.py"]
    assert [(d.path, d.line) for d in lint_paths(["src"], config)] == [("src/a.py", 2)]
    with pytest.raises(FileNotFoundError):
        lint_paths(["src", "nope"], config)
