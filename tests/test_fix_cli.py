"""``loopcheck --fix`` and ``--diff`` through a real subprocess: exit codes, file contents,
diff text, standard input, JSON edits, and the rule catalog's word on fixes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loopcheck.diagnostic import Edit
from loopcheck.fix.engine import apply_edits

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "fix"
BUGGY = FIX / "lc102_plain_loop.py"
FIXED = FIX / "lc102_plain_loop.fixed.py"
STUCK = FIX / "lc101_unfixable_accumulation_guard.py"
CLEAN = FIXED  # a fixed script is a clean one


def loopcheck(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "loopcheck", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A directory with a fixable script, an unfixable one and a clean one."""
    (tmp_path / "buggy.py").write_bytes(BUGGY.read_bytes())
    (tmp_path / "stuck.py").write_bytes(STUCK.read_bytes())
    (tmp_path / "clean.py").write_bytes(CLEAN.read_bytes())
    return tmp_path


def test_check_marks_fixable_findings(project: Path) -> None:
    result = loopcheck("buggy.py", "stuck.py", cwd=project)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert any(line.startswith("buggy.py:17:13: LC102 [*] ") for line in lines)
    assert any(line.startswith("stuck.py:12:13: LC101 `optimizer.step()`") for line in lines)
    assert "  = help: Move `optimizer.zero_grad()` after `optimizer.step()`" in lines
    assert lines[-2:] == ["Found 2 errors.", "[*] 1 fixable with the `--fix` option."]


def test_fix_markers_come_back_from_the_cache(project: Path, tmp_path_factory) -> None:
    """Fixes are checked where files are linted and cached with the findings: a warm run
    (which lints nothing) marks the same findings fixable, and a changed file is re-judged."""
    cache = tmp_path_factory.mktemp("cache")
    command = [sys.executable, "-m", "loopcheck", "check", "buggy.py", "stuck.py"]

    def run() -> subprocess.CompletedProcess:
        return subprocess.run(
            command,
            cwd=project,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "LOOPCHECK_CACHE_DIR": str(cache)},
        )

    cold = run()
    entries = [json.loads(p.read_text()) for p in cache.rglob("*.json")]
    assert any(d.get("fix") for entry in entries for d in entry.get("diagnostics", [])), entries
    warm = run()
    assert cold.stdout == warm.stdout
    assert "[*] 1 fixable with the `--fix` option." in warm.stdout
    (project / "buggy.py").write_bytes(FIXED.read_bytes())
    assert "fixable" not in run().stdout


def test_diff_prints_the_fix_and_writes_nothing(project: Path) -> None:
    result = loopcheck("--diff", ".", cwd=project)
    assert result.returncode == 1
    assert result.stdout.startswith("--- buggy.py\n+++ buggy.py\n@@ ")
    assert "+            optimizer.step()\n" in result.stdout
    assert "-            optimizer.step()\n" in result.stdout
    assert "stuck.py" not in result.stdout and "clean.py" not in result.stdout
    assert result.stderr == "Would fix 1 error.\n"
    assert (project / "buggy.py").read_bytes() == BUGGY.read_bytes()


def test_diff_on_clean_files_exits_zero(project: Path) -> None:
    result = loopcheck("--diff", "clean.py", "stuck.py", cwd=project)
    assert (result.returncode, result.stdout) == (0, "")
    assert result.stderr == "No errors would be fixed.\n"


def test_fix_writes_the_fixed_file_and_reports_what_remains(project: Path) -> None:
    result = loopcheck("--fix", ".", cwd=project)
    assert result.returncode == 1  # stuck.py keeps its finding
    assert (project / "buggy.py").read_bytes() == FIXED.read_bytes()
    assert (project / "stuck.py").read_bytes() == STUCK.read_bytes()
    assert (project / "clean.py").read_bytes() == CLEAN.read_bytes()
    assert "buggy.py" not in result.stdout
    assert "stuck.py:12:13: LC101 " in result.stdout
    assert result.stdout.endswith("Found 2 errors (1 fixed, 1 remaining).\n")
    again = loopcheck("--fix", "buggy.py", "clean.py", cwd=project)
    assert (again.returncode, again.stdout) == (0, "All checks passed!\n")


def test_fix_that_fixes_everything_exits_zero(project: Path) -> None:
    result = loopcheck("--fix", "buggy.py", cwd=project)
    assert (result.returncode, result.stdout) == (0, "Found 1 error (1 fixed, 0 remaining).\n")


def test_fix_on_standard_input_prints_the_fixed_source(project: Path) -> None:
    args = ("--fix", "-", "--stdin-filename", "train.py")
    result = loopcheck(*args, cwd=project, stdin=BUGGY.read_text())
    assert (result.returncode, result.stdout) == (0, FIXED.read_text())
    assert result.stderr == "Found 1 error (1 fixed, 0 remaining).\n"
    stuck = loopcheck(*args, cwd=project, stdin=STUCK.read_text())
    assert (stuck.returncode, stuck.stdout) == (1, STUCK.read_text())
    assert "train.py:12:13: LC101 " in stuck.stderr


def test_json_fix_edits_rebuild_the_fixed_file(project: Path) -> None:
    result = loopcheck("--format", "json", "buggy.py", "stuck.py", cwd=project)
    records = {r["filename"]: r for r in json.loads(result.stdout)}
    assert records["stuck.py"]["fix"] is None
    fix = records["buggy.py"]["fix"]
    assert set(fix) == {"applicability", "message", "edits"}
    assert fix["applicability"] == "safe"
    edits = [
        Edit(e["content"], *e["location"].values(), *e["end_location"].values())
        for e in fix["edits"]
    ]
    assert apply_edits(BUGGY.read_text(), edits) == FIXED.read_text()


def test_rule_catalog_says_which_rules_are_fixable(project: Path) -> None:
    listing = loopcheck("rules", cwd=project).stdout.splitlines()
    marked = {line.split()[0] for line in listing if "(fixable)" in line}
    assert marked == {"LC101", "LC102", "LC106", "LC107", "LC201", "LC301", "LC401"}
    assert "Fix: available with `--fix`" in loopcheck("rule", "LC106", cwd=project).stdout
    assert "Fix: none" in loopcheck("rule", "LC103", cwd=project).stdout
