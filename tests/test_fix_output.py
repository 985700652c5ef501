"""How a fixable finding looks in each output format: ruff's ``[*]`` and help line, the
summary's count, JSON's ``fix`` object and SARIF's ``fixes``."""

from __future__ import annotations

import json

from loopcheck.diagnostic import Diagnostic, Edit, Fix
from loopcheck.output import (
    format_concise,
    format_rule,
    format_rules,
    format_sarif,
    format_text,
    json_record,
    summary,
)
from loopcheck.rules import ALL_RULES, get_rule

SOURCE = b"loss.backward()\nopt.zero_grad()\nopt.step()\n"
MOVE = Fix(
    "Move `opt.zero_grad()` after `opt.step()`",
    (Edit("", 2, 1, 3, 1), Edit("opt.zero_grad()\n", 4, 1, 4, 1)),
)


def fixable() -> Diagnostic:
    return Diagnostic("t.py", 2, 1, "LC102", "cleared", "zero-grad-after-backward", 2, 16, MOVE)


def test_text_formats_mark_the_fix_as_ruff_does() -> None:
    plain = Diagnostic("t.py", 3, 1, "LC101", "piled", "missing-zero-grad", 3, 11)
    text = format_text([fixable(), plain], {"t.py": SOURCE})
    assert text.splitlines()[0] == "t.py:2:1: LC102 [*] cleared"
    assert "  = help: Move `opt.zero_grad()` after `opt.step()`" in text.splitlines()
    assert "t.py:3:1: LC101 piled" in text.splitlines()
    assert format_concise([fixable()], {}) == "t.py:2:1: LC102 [*] cleared\n"
    assert summary([fixable(), plain]).splitlines()[-1] == "[*] 1 fixable with the `--fix` option."
    assert summary([plain], fixed=2) == "Found 3 errors (2 fixed, 1 remaining).\n"


def test_json_and_sarif_carry_the_edits() -> None:
    record = json_record(fixable())
    assert record["fix"] == {
        "applicability": "safe",
        "message": MOVE.message,
        "edits": [
            {
                "content": "",
                "location": {"row": 2, "column": 1},
                "end_location": {"row": 3, "column": 1},
            },
            {
                "content": "opt.zero_grad()\n",
                "location": {"row": 4, "column": 1},
                "end_location": {"row": 4, "column": 1},
            },
        ],
    }
    (result,) = json.loads(format_sarif([fixable()], ALL_RULES))["runs"][0]["results"]
    (sarif_fix,) = result["fixes"]
    assert sarif_fix["description"]["text"] == MOVE.message
    (change,) = sarif_fix["artifactChanges"]
    assert change["artifactLocation"]["uri"] == "t.py"
    assert change["replacements"][1] == {
        "deletedRegion": {"startLine": 4, "startColumn": 1, "endLine": 4, "endColumn": 1},
        "insertedContent": {"text": "opt.zero_grad()\n"},
    }


def test_the_catalog_marks_rules_with_a_fixer() -> None:
    zero_after, step_before = get_rule("LC102"), get_rule("LC103")
    lines = format_rules([zero_after, step_before]).splitlines()
    assert lines[0].endswith("(fixable)") and not lines[1].endswith("(fixable)")
    assert "Fix: available with `--fix` when it is certain: moves the clear" in format_rule(
        zero_after
    )
    assert "Fix: none" in format_rule(step_before)
    record = json.loads(format_rule(zero_after, "json"))
    assert record["fixable"] is True and record["fix"].startswith("moves the clear")
    assert json.loads(format_rule(step_before, "json"))["fix"] is None
