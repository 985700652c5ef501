"""Output formats: golden files for each format, and the details of frames and escaping.

Set ``LOOPCHECK_UPDATE_GOLDEN=1`` to rewrite the golden files after an intended change.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from loopcheck import __version__
from loopcheck.diagnostic import Diagnostic
from loopcheck.output import (
    FORMATS,
    code_frame,
    format_github,
    format_rule,
    format_rules,
    format_sarif,
    format_statistics,
    format_statistics_json,
    json_record,
    render,
    summary,
)
from loopcheck.rules import Rule

GOLDEN = Path(__file__).parent / "golden"

SOURCE = b"""import torch

for x, y in loader:
\tloss = model(x)
    loss.backward()
    opt.zero_grad()  # comment
    opt.step()
"""


NOTEBOOK = json.dumps(
    {
        "cells": [
            {"cell_type": "markdown", "metadata": {}, "source": ["# Training\n"]},
            {
                "cell_type": "code",
                "metadata": {},
                "execution_count": 1,
                "outputs": [],
                "source": ["%matplotlib inline\n", "for x, y in loader:\n", "    loss.backward()"],
            },
            {"cell_type": "markdown", "metadata": {}, "source": "Then:"},
            {
                "cell_type": "code",
                "metadata": {},
                "execution_count": 2,
                "outputs": [],
                "source": "opt.zero_grad()\nopt.step()\n",
            },
        ],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 5,
    },
    indent=1,
).encode()


class FakeZeroAfterBackward(Rule):
    """## What it does
    Test rule.

    ## Why is this bad?
    Because.

    ## Example
    ```python
    loss.backward()
    ```

    ## Use instead
    ```python
    pass
    ```
    """

    code = "LC102"
    name = "zero-grad-after-backward"
    summary = "gradients cleared between backward and step"


class FakeOffByDefault(Rule):
    """## What it does
    Off by default.
    """

    code = "LC205"
    name = "partial-accumulation-dropped"
    summary = "partial accumulation dropped"
    default_enabled = False


RULES = (FakeZeroAfterBackward, FakeOffByDefault)


def diagnostics() -> list[Diagnostic]:
    return [
        Diagnostic("src/train.py", 4, 2, "LC104", "tab-indented line", "missing-backward", 4, 6),
        Diagnostic(
            "src/train.py",
            6,
            5,
            "LC102",
            "gradients cleared between backward and step",
            "zero-grad-after-backward",
            6,
            20,
        ),
        Diagnostic("src/train.py", 5, 5, "LC105", "spans two lines", "missing-step", 6, 8),
        Diagnostic("other dir/broken, 100%.py", 1, 1, "LC900", "syntax error: a\nb", "parse-error"),
        # in a notebook: cell 4's first line comes after cell 2's last
        Diagnostic(
            "train.ipynb", 1, 1, "LC102", "in cell 4", "zero-grad-after-backward", 1, 16, cell=4
        ),
        Diagnostic("train.ipynb", 3, 5, "LC105", "in cell 2", "missing-step", 3, 20, cell=2),
    ]


@pytest.mark.parametrize("output_format", FORMATS)
def test_golden(output_format: str) -> None:
    sources = {"src/train.py": SOURCE, "other dir/broken, 100%.py": None, "train.ipynb": NOTEBOOK}
    out = render(sorted(diagnostics()), output_format, sources=sources, rules=RULES)
    if output_format == "sarif":  # the golden file must not change with each release
        out = out.replace(json.dumps(__version__), '"<version>"')
    golden = GOLDEN / f"{output_format}.txt"
    if os.environ.get("LOOPCHECK_UPDATE_GOLDEN") == "1":
        GOLDEN.mkdir(exist_ok=True)
        golden.write_text(out, encoding="utf-8")
    assert out == golden.read_text(encoding="utf-8")


def test_code_frame_puts_the_carets_under_the_span() -> None:
    d = Diagnostic("a.py", 12, 5, "LC102", "m", end_line=12, end_column=20)
    assert code_frame(d, "    opt.zero_grad()  # x\n") == [
        "   |",
        "12 |     opt.zero_grad()  # x",
        "   |     ^^^^^^^^^^^^^^^",
        "   |",
    ]


def test_code_frame_keeps_tabs_so_the_caret_lines_up() -> None:
    d = Diagnostic("a.py", 1, 3, "LC102", "m", end_line=1, end_column=4)
    assert code_frame(d, "\t\tx")[2] == "  | \t\t^"


def test_code_frame_of_a_multiline_span_underlines_to_the_end_of_the_line() -> None:
    d = Diagnostic("a.py", 1, 3, "LC102", "m", end_line=3, end_column=2)
    assert code_frame(d, "x = (")[2] == "  |   ^^^"


def test_code_frame_caret_past_the_end_of_the_line_stays_one_wide() -> None:
    d = Diagnostic("a.py", 1, 40, "LC900", "m", end_line=1, end_column=40)
    assert code_frame(d, "x = (")[2] == "  |      ^"


def test_code_frame_blanks_control_characters() -> None:
    d = Diagnostic("a.py", 1, 1, "LC900", "m")
    assert "\x1b" not in "".join(code_frame(d, "x = '\x1b[31m'"))


def test_text_without_the_source_prints_no_frame() -> None:
    out = render([Diagnostic("gone.py", 3, 1, "LC900", "cannot read file")], "text")
    assert out == "gone.py:3:1: LC900 cannot read file\n"


def test_text_has_no_frame_for_a_binary_file() -> None:
    d = Diagnostic("bin.py", 1, 1, "LC900", "binary")
    assert render([d], "text", sources={"bin.py": b"\x00backward"}) == "bin.py:1:1: LC900 binary\n"


def test_summary_counts_errors() -> None:
    d = Diagnostic("a.py", 1, 1, "LC900", "m")
    assert summary([]) == "All checks passed!\n"
    assert summary([d]) == "Found 1 error.\n"
    assert summary([d, d]) == "Found 2 errors.\n"


def test_json_has_ruffs_fields() -> None:
    d = Diagnostic("a.py", 2, 3, "LC102", "msg", "zero-grad-after-backward", 2, 9)
    assert json_record(d) == {
        "code": "LC102",
        "message": "msg",
        "filename": "a.py",
        "cell": None,
        "location": {"row": 2, "column": 3},
        "end_location": {"row": 2, "column": 9},
        "fix": None,
        "url": d.url,
        "noqa_row": 2,
    }
    in_notebook = json_record(replace(d, path="a.ipynb", cell=3))
    assert (in_notebook["cell"], in_notebook["location"]) == (3, {"row": 2, "column": 3})


def test_json_end_defaults_to_the_start_when_unset() -> None:
    record = json_record(Diagnostic("a.py", 2, 3, "LC900", "m"))
    assert record["end_location"] == {"row": 2, "column": 3}


def test_github_escapes_properties_and_data() -> None:
    d = Diagnostic("a,b:c.py", 1, 2, "LC900", "50% of\nit", end_line=1, end_column=4)
    assert format_github([d], {}) == (
        "::error file=a%2Cb%3Ac.py,line=1,col=2,endLine=1,endColumn=4,title=LC900::50%25 of%0Ait\n"
    )


def test_sarif_lists_rules_and_points_results_at_them() -> None:
    log = json.loads(format_sarif(diagnostics(), RULES))
    assert log["version"] == "2.1.0"
    (run,) = log["runs"]
    driver = run["tool"]["driver"]
    assert driver["name"] == "loopcheck"
    assert driver["version"] == __version__
    rules = driver["rules"]
    assert [rule["id"] for rule in rules] == ["LC102", "LC205"]
    assert rules[0]["shortDescription"]["text"] == FakeZeroAfterBackward.summary
    assert rules[0]["fullDescription"]["text"] == "Test rule."
    assert rules[0]["help"]["text"] == FakeZeroAfterBackward.doc()
    assert rules[0]["helpUri"].endswith("LC102.md")
    assert rules[1]["defaultConfiguration"]["enabled"] is False
    by_rule = {
        result["ruleId"]: result
        for result in run["results"]
        if not result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"].endswith(
            ".ipynb"
        )
    }
    assert by_rule["LC102"]["ruleIndex"] == 0
    assert "ruleIndex" not in by_rule["LC900"]  # not in the rules given
    region = by_rule["LC102"]["locations"][0]["physicalLocation"]["region"]
    assert region == {"startLine": 6, "startColumn": 5, "endLine": 6, "endColumn": 20}
    assert "properties" not in by_rule["LC102"]["locations"][0]
    location = by_rule["LC900"]["locations"][0]["physicalLocation"]["artifactLocation"]
    assert location["uri"] == "other%20dir/broken%2C%20100%25.py"


def test_sarif_places_a_notebook_finding_in_its_cell() -> None:
    d = Diagnostic("nb.ipynb", 2, 5, "LC102", "msg", end_line=2, end_column=9, cell=3)
    (result,) = json.loads(format_sarif([d], RULES))["runs"][0]["results"]
    (location,) = result["locations"]
    assert location["properties"] == {"cell": 3}
    assert location["physicalLocation"]["region"]["startLine"] == 2  # the cell's own line
    assert result["message"]["text"] == "cell 3: msg"


def test_sarif_uri_of_an_absolute_path_is_a_file_uri(tmp_path: Path) -> None:
    d = Diagnostic(str(tmp_path / "a.py"), 1, 1, "LC900", "m")
    (result,) = json.loads(format_sarif([d], RULES))["runs"][0]["results"]
    uri = result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
    assert uri == (tmp_path / "a.py").as_uri()


def test_statistics_count_per_code_most_frequent_first() -> None:
    found = [
        Diagnostic("a.py", 1, 1, "LC900", "m", "parse-error"),
        Diagnostic("a.py", 2, 1, "LC102", "m", "zero-grad-after-backward"),
        Diagnostic("b.py", 2, 1, "LC102", "m", "zero-grad-after-backward"),
    ]
    assert format_statistics(found) == "2\tLC102\tzero-grad-after-backward\n1\tLC900\tparse-error\n"
    assert json.loads(format_statistics_json(found))[0] == {
        "code": "LC102",
        "name": "zero-grad-after-backward",
        "count": 2,
    }


def test_rule_text_is_the_docstring_under_a_heading() -> None:
    out = format_rule(FakeZeroAfterBackward)
    assert out.startswith("# zero-grad-after-backward (LC102)\n")
    assert FakeZeroAfterBackward.doc() in out
    assert "off by default" not in out
    assert "off by default" in format_rule(FakeOffByDefault)


def test_rule_json() -> None:
    record = json.loads(format_rule(FakeOffByDefault, "json"))
    assert record["code"] == "LC205"
    assert record["default_enabled"] is False
    assert record["explanation"] == FakeOffByDefault.doc()


def test_rules_table_is_sorted_and_marks_rules_off_by_default() -> None:
    lines = format_rules(reversed(RULES)).splitlines()
    assert [line.split()[0] for line in lines] == ["LC102", "LC205"]
    assert lines[1].endswith("(off by default)")
    records = json.loads(format_rules(RULES, "json"))
    assert [record["code"] for record in records] == ["LC102", "LC205"]
