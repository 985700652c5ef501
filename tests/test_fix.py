"""Autofix: each fix on its before/after fixture pair, the cases that must stay unfixable, and
the engine's own guarantees (checked fixes, no overlap, bounded passes, bytes kept).

Fixture pairs live in ``fixtures/fix``: ``<name>.py`` is the buggy script, ``<name>.fixed.py``
exactly what fixing it must give. A script without a ``.fixed.py`` must stay unfixable. The
codes a script holds are in its name (``lc102_lc106_overlapping.py``).
"""

from __future__ import annotations

import codecs
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from loopcheck.api import lint_source
from loopcheck.config import Config
from loopcheck.diagnostic import Diagnostic, Edit, Fix
from loopcheck.fix import ALL_FIXERS, get_fixer
from loopcheck.fix import engine as fix_engine
from loopcheck.fix.engine import (
    apply_edits,
    attach_fixes,
    check_fix,
    fix_report,
    fix_text,
    non_overlapping,
    with_fixes,
)
from loopcheck.fix.source import SourceFile, split_lines
from loopcheck.rules import ALL_RULES, Rule, get_rule
from loopcheck.rules._base import ProtocolRule
from loopcheck.runner import FileReport, lint_file_source

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
FIX = FIXTURES / "fix"
BUGS = FIXTURES / "bugs"


def stand_in(rule_code: str) -> type[Rule]:
    """A rule reporting every violation of ``rule_code`` the analysis recorded, as the real
    rule (a ProtocolRule) will once it is in the registry."""
    return type(
        f"StandIn{rule_code}",
        (ProtocolRule,),
        {"code": rule_code, "name": f"pending-{rule_code.lower()}", "summary": "s", "message": "m"},
    )


def codes_of(path: Path) -> set[str]:
    return {code.upper() for code in re.findall(r"lc\d{3}", path.name)}


def rules_for(path: Path) -> tuple[type[Rule], ...]:
    """The registry, plus a stand-in for each code in the name not registered yet."""
    pending = sorted(code for code in codes_of(path) if get_rule(code) is None)
    return (*ALL_RULES, *(stand_in(code) for code in pending))


def fixed_twin(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".py") + ".fixed.py")


def divided_twin(old: str, new: str) -> bool:
    """Whether ``new`` is ``old`` with a division inserted (LC201's fix) and nothing else
    but parentheses."""
    undivided = re.sub(r" / (len\([\w.]+\)|[\w.]+)", "", new, count=1)
    return undivided != new and re.sub(r"[()]", "", undivided) == re.sub(r"[()]", "", old)


BEFORE = sorted(p for p in FIX.glob("*.py") if not p.name.endswith(".fixed.py"))
PAIRS = [p for p in BEFORE if fixed_twin(p).exists()]
UNFIXABLE = [p for p in BEFORE if not fixed_twin(p).exists()]


def test_fixture_layout() -> None:
    assert len(PAIRS) >= 10 and len(UNFIXABLE) >= 10
    assert all("unfixable" in p.name for p in UNFIXABLE)
    assert not any("unfixable" in p.name for p in PAIRS)
    for twin in FIX.glob("*.fixed.py"):
        assert twin.with_name(twin.name.removesuffix(".fixed.py") + ".py").exists()
    covered = {code for p in PAIRS for code in codes_of(p)}
    assert covered == {fixer.code for fixer in ALL_FIXERS}


# -- fixture pairs --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PAIRS, ids=lambda p: p.stem)
def test_fix_gives_the_fixed_fixture_and_it_lints_clean(path: Path) -> None:
    text = path.read_text()
    rules = rules_for(path)
    before = lint_source(text, str(path), rules)
    assert before and {d.code for d in before} == codes_of(path)
    outcome = fix_text(text, str(path), Config(rules=rules))
    assert outcome.text == fixed_twin(path).read_text()
    assert (outcome.fixed, outcome.remaining) == (len(before), [])
    assert lint_source(outcome.text, str(path), rules) == []


@pytest.mark.parametrize(
    "path",
    [p for p in PAIRS if any(get_rule(c) is None for c in codes_of(p))],
    ids=lambda p: p.stem,
)
def test_fix_of_a_pending_rule_end_to_end(path: Path) -> None:
    """The fixers of rules still to come (LC301, LC401) through the registry, once it has them."""
    missing = sorted(code for code in codes_of(path) if get_rule(code) is None)
    if missing:
        pytest.skip(f"{', '.join(missing)} not in the rule registry yet: fixer tested via stand-in")
    outcome = fix_text(path.read_text(), str(path), Config())
    assert outcome.text == fixed_twin(path).read_text()
    assert outcome.remaining == []


@pytest.mark.parametrize("path", PAIRS, ids=lambda p: p.stem)
def test_a_fix_changes_no_line_it_does_not_move_or_insert(path: Path) -> None:
    """Comments and formatting survive: every line of the script is in the fixed script, byte for
    byte (a move keeps its lines, comments included); the only new lines are inserted calls."""
    before, after = (
        Counter(split_lines(path.read_text())),
        Counter(split_lines(fixed_twin(path).read_text())),
    )
    changed = before - after
    added = after - before
    if "lc201" in path.name:  # the one fix that edits within a line: the loss given to backward
        assert len(changed) == len(added) == 1
        (old,), (new,) = changed, added
        assert divided_twin(old, new)
        return
    assert changed == Counter()
    assert all(re.fullmatch(r"\s*[\w.]+\.(zero_grad|unscale_)\([\w.]*\)\n", line) for line in added)


def test_a_moved_statement_takes_its_own_comment_lines_along() -> None:
    fixed = split_lines((FIX / "lc102_plain_loop.fixed.py").read_text())
    i = fixed.index("            optimizer.zero_grad()  # keep: set_to_none is the default\n")
    assert fixed[i - 1] == "            # start every batch from clean gradients\n"
    assert fixed[i - 2] == "            optimizer.step()\n"
    assert fixed[i - 3] == "\n"  # the blank line stays where it was


# -- what stays unfixable -------------------------------------------------------------------------


@pytest.mark.parametrize("path", UNFIXABLE, ids=lambda p: p.stem)
def test_unfixable_fixture_stays_unfixable(path: Path) -> None:
    text = path.read_text()
    rules = rules_for(path)
    before = lint_source(text, str(path), rules)
    assert before and {d.code for d in before} == codes_of(path)
    assert all(d.fix is None for d in attach_fixes(before, text, str(path), rules))
    outcome = fix_text(text, str(path), Config(rules=rules))
    assert (outcome.text, outcome.fixed, outcome.remaining) == (text, 0, before)


@pytest.mark.parametrize(
    "name",
    [
        "lc101_unfixable_accumulation_guard",
        "lc101_unfixable_micro_batch_loop",
        "lc101_unfixable_step_in_helper",
        "lc102_unfixable_backward_in_caller",
        "lc101_lc102_unfixable_clear_in_branch",
        "lc102_unfixable_skip_between",
        "lc106_unfixable_amp_without_unscale",
        "lc106_unfixable_params_after_step",
        "lc107_unfixable_guarded_step",
        "lc301_unfixable_step_in_helper",
        "lc201_unfixable_backward_in_helper",
        "lc201_unfixable_chunked_micro_batches",
        "lc201_unfixable_two_guards",
    ],
)
def test_the_fixer_itself_refuses_what_is_not_certain(name: str) -> None:
    """Not merely rejected by the check: the fixer proposes nothing for these shapes."""
    path = FIX / f"{name}.py"
    text = path.read_text()
    findings = lint_source(text, str(path), rules_for(path))
    assert {f.code for f in findings} == codes_of(path)
    for finding in findings:
        fixer = get_fixer(finding.code)
        assert fixer is not None
        assert list(fixer().candidates(SourceFile(text), finding)) == []


def test_a_fix_that_would_surface_another_finding_is_not_applied() -> None:
    """Two schedulers before the step: the fixer proposes a move, the check rejects it (the
    other scheduler would be reported in its place)."""
    path = FIX / "lc401_unfixable_two_schedulers.py"
    text = path.read_text()
    rules = rules_for(path)
    (finding,) = lint_source(text, str(path), rules)
    (candidate,) = get_fixer("LC401")().candidates(SourceFile(text), finding)
    assert check_fix(text, str(path), rules, finding, candidate) is None


def test_lc101_fix_needs_the_loop_from_the_analysis() -> None:
    """The rule names the loop to clear in only when it steps one optimizer; without it, no fix."""
    path = FIX / "lc101_plain_loop.py"
    text = path.read_text()
    (finding,) = lint_source(text, str(path))
    assert finding.related is not None
    source = SourceFile(text)
    assert list(get_fixer("LC101")().candidates(source, finding))
    orphan = replace(finding, related=None)
    assert list(get_fixer("LC101")().candidates(source, orphan)) == []


# -- the bug fixtures -----------------------------------------------------------------------------

FULLY_FIXED = [
    "lc101_amp_scaler_step",
    "lc101_class_trainer",
    "lc101_module_level",
    "lc101_plain_loop",
    "lc101_zero_grad_outside_loop",
    "lc102_accumulation_guard",
    "lc102_class_trainer",
    "lc102_helper_not_called",
    "lc102_plain_loop",
    "lc106_accumulation_guard",
    "lc106_helper",
    "lc106_plain_loop",
    "lc107_helper_multiline",
    "lc107_loop_top",
    "lc107_nested_accumulation",
]


def test_fixing_the_bug_fixtures() -> None:
    """Whatever each bug fixture holds, fixing only removes findings: the fixed text compiles,
    every finding left was there before and has no fix, no line was lost; and the fixtures in
    ``FULLY_FIXED`` are fixed completely."""
    complete = set()
    for path in sorted(BUGS.glob("*.py")):
        text = path.read_text(errors="replace")
        before = Counter(d.code for d in lint_source(text, str(path)))
        outcome = fix_text(text, str(path), Config())
        after = Counter(d.code for d in outcome.remaining)
        assert after <= before, path.name
        assert sum(before.values()) - sum(after.values()) >= outcome.fixed, path.name
        assert all(d.fix is None for d in outcome.remaining), path.name
        if outcome.fixed:
            compile(outcome.text, str(path), "exec")
            lost = Counter(split_lines(text)) - Counter(split_lines(outcome.text))
            new = Counter(split_lines(outcome.text)) - Counter(split_lines(text))
            assert all(any(divided_twin(old, line) for line in new) for old in lost), path.name
            if not outcome.remaining:
                complete.add(path.stem)
    assert set(FULLY_FIXED) <= complete


def test_a_lint_that_is_the_judges_own_gives_the_same_fixes() -> None:
    """Linting one file with fixes hands its findings to the judge of the fixes instead of
    letting it lint the text again: the fixes attached are the same either way."""
    config = Config()
    attached = 0
    for path in sorted([*BUGS.glob("*.py"), *FIX.glob("*.py")]):
        source = path.read_bytes()
        reused = lint_file_source(source, str(path), config, fixes=True).diagnostics
        plain = list(lint_file_source(source, str(path), config).diagnostics)
        text = fix_engine.python_text(source, str(path), plain)
        if text is not None:
            plain = attach_fixes(plain, text, str(path), config.rules)
        assert list(reused) == sorted(plain), path.name
        attached += sum(d.fix is not None for d in reused)
    assert attached > 20


# -- the engine ------------------------------------------------------------------------------


def test_apply_edits_inserts_deletes_and_replaces() -> None:
    text = "a\nbb\nccc\n"
    assert apply_edits(text, [Edit("X\n", 2, 1, 2, 1)]) == "a\nX\nbb\nccc\n"
    assert apply_edits(text, [Edit("", 1, 1, 2, 1), Edit("Y", 3, 2, 3, 3)]) == "bb\ncYc\n"
    assert apply_edits(text, [Edit("end\n", 4, 1, 4, 1)]) == text + "end\n"
    # an insertion where a deletion ends, and one where it starts
    assert apply_edits(text, [Edit("", 1, 1, 2, 1), Edit("Z\n", 2, 1, 2, 1)]) == "Z\nbb\nccc\n"
    assert apply_edits(text, [Edit("Z\n", 2, 1, 2, 1), Edit("", 2, 1, 3, 1)]) == "a\nZ\nccc\n"


def test_non_overlapping_keeps_fixes_that_do_not_touch() -> None:
    def fix(line: int, end: int) -> tuple[Diagnostic, Fix]:
        return Diagnostic("a.py", line, 1, "LC102", "m"), Fix("m", (Edit("", line, 1, end, 1),))

    first, touching, overlapping, apart = fix(1, 3), fix(3, 4), fix(2, 5), fix(6, 7)
    chosen = non_overlapping([apart, overlapping, touching, first])
    assert chosen == [first, apart]


def test_overlapping_fixes_are_applied_one_pass_after_the_other(monkeypatch) -> None:
    path = FIX / "lc102_lc106_overlapping.py"
    text = path.read_text()
    found = attach_fixes(lint_source(text, str(path)), text, str(path), ALL_RULES)
    assert [d.code for d in found] == ["LC102", "LC106"] and all(d.fix for d in found)
    assert len(non_overlapping([(d, d.fix) for d in found])) == 1
    monkeypatch.setattr(fix_engine, "MAX_PASSES", 1)
    outcome = fix_text(text, str(path), Config())
    assert outcome.fixed == 1
    (left,) = outcome.remaining
    assert left.code == "LC106" and left.fix is not None  # fixable, the passes ran out


def test_the_check_rejects_a_fix_that_breaks_the_file_or_keeps_the_finding() -> None:
    path = FIX / "lc102_plain_loop.py"
    text = path.read_text()
    (finding,) = lint_source(text, str(path))
    line = finding.line

    def verdict(*edits: Edit) -> str | None:
        return check_fix(text, str(path), ALL_RULES, finding, Fix("m", edits))

    (proposed,) = get_fixer("LC102")().candidates(SourceFile(text), finding)
    assert verdict(*proposed.edits) == (FIX / "lc102_plain_loop.fixed.py").read_text()
    assert verdict(Edit("    ", line, 1, line, 1)) is None  # an indentation error
    assert verdict(Edit("# nothing\n", 1, 1, 1, 1)) is None  # the finding stays
    assert verdict(Edit("", line, 1, line + 1, 1)) is None  # no clear at all: LC101 appears
    assert verdict(Edit("", line, 1, line + 2, 1)) is None  # no step either: LC105 appears


def test_noqa_findings_are_not_fixed() -> None:
    path = FIX / "lc102_plain_loop.py"
    text = path.read_text().replace("# keep: set_to_none", "# noqa: LC102 set_to_none")
    outcome = fix_text(text, str(path), Config())
    assert (outcome.text, outcome.fixed, outcome.remaining) == (text, 0, [])


def test_fixes_of_rules_not_selected_are_not_applied() -> None:
    path = FIX / "lc102_lc106_overlapping.py"
    text = path.read_text()
    from loopcheck.config import Selection

    outcome = fix_text(text, str(path), Config(selections=(Selection(ignore=("LC106",)),)))
    assert outcome.fixed == 1 and outcome.remaining == []
    assert lint_source(outcome.text, str(path))[0].code == "LC106"


def test_crlf_line_endings_are_kept() -> None:
    path = FIX / "lc106_plain_loop.py"
    crlf = path.read_text().replace("\n", "\r\n")
    outcome = fix_text(crlf, str(path), Config())
    assert outcome.text == fixed_twin(path).read_text().replace("\n", "\r\n")


def test_a_file_without_a_final_newline() -> None:
    text = "import torch\nfor x in loader:\n    model(x).sum().backward()\n"
    buggy = text + "    opt.zero_grad()\n    opt.step()"
    assert [d.code for d in lint_source(buggy, "a.py")] == ["LC102"]
    outcome = fix_text(buggy, "a.py", Config())
    assert outcome.text == text + "    opt.step()\n    opt.zero_grad()"
    # the moved statement was the last line: the file gains the newline it ends with now
    text = text.replace("loader:\n", "loader:\n    opt.zero_grad()\n")
    moved = fix_text(text + "    opt.step()\n    clip_grad_norm_(ps, 1.0)", "a.py", Config())
    assert moved.text == text + "    clip_grad_norm_(ps, 1.0)\n    opt.step()\n"


def test_fix_report_keeps_a_byte_order_mark() -> None:
    path = FIX / "lc107_loop_top.py"
    data = codecs.BOM_UTF8 + path.read_bytes()
    (finding,) = lint_source(data, "a.py")
    result = fix_report(FileReport("a.py", data, (finding,)), Config())
    assert result is not None and result.fixed == 1
    assert result.report.source == codecs.BOM_UTF8 + fixed_twin(path).read_bytes()
    assert result.report.diagnostics == ()


@pytest.mark.parametrize("fixer", ALL_FIXERS, ids=lambda f: f.code)
def test_every_fixer_fixes_a_rule_of_the_catalog(fixer) -> None:
    assert re.fullmatch(r"LC\d{3}", fixer.code) and fixer.summary and fixer.__doc__
    if get_rule(fixer.code) is None:
        pytest.skip(f"{fixer.code} is not in the rule registry yet")


def test_notebooks_are_never_fixed() -> None:
    """A notebook's findings are placed in its cells, not in the JSON bytes of the file."""
    data = (FIX / "lc107_loop_top.py").read_bytes()
    (finding,) = lint_source(data, "train.ipynb")
    report = FileReport("train.ipynb", data, (replace(finding, path="train.ipynb"),))
    assert fix_report(report, Config()) is None
    assert with_fixes(report, Config()) is report
    assert fix_report(replace(report, path="train.py"), Config()) is not None


def test_a_finding_placed_in_another_file_is_not_fixed_here() -> None:
    path = FIX / "lc107_loop_top.py"
    text = path.read_text()
    (finding,) = lint_source(text, str(path))
    elsewhere = replace(finding, path="helpers.py")
    assert attach_fixes([finding], text, str(path), ALL_RULES)[0].fix is not None
    assert attach_fixes([elsewhere], text, str(path), ALL_RULES)[0].fix is None
