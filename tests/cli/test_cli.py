"""The command line end to end: paths, formats, selection, noqa, config, bad input, exit codes.

Findings come from LC900 (a file with a syntax error that mentions ``backward``), so these
tests hold whatever other rules are registered; tests that need other codes or spans run the
runner with small rules of their own.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_harness import BROKEN, CLEAN, REPO, Result, write

import loopcheck
from loopcheck import runner
from loopcheck.api import lint_source
from loopcheck.cli import main, with_default_command
from loopcheck.files import collect_files
from loopcheck.rules import ALL_RULES, Rule

# -- exit codes and the text formats ----------------------------------------------------------


def broken_column() -> int:
    """Where the API places the syntax error in BROKEN (the CLI must report the same)."""
    (found,) = lint_source(BROKEN, "train.py")
    assert (found.line, found.code) == (1, "LC900")
    return found.column


def test_a_finding_is_reported_with_its_line_and_exit_1(run) -> None:
    write("train.py")
    result = run("train.py")
    column = broken_column()
    assert result.code == 1
    assert result.out.startswith(f"train.py:1:{column}: LC900 ")
    caret = " " * (column - 1) + "^"
    assert f"1 | x = = 1  # backward\n  | {caret}\n" in result.out  # the code frame
    assert result.out.endswith("\nFound 1 error.\n")
    assert result.err == ""


def test_a_clean_file_exits_0(run) -> None:
    write("train.py", CLEAN)
    assert run("check", "train.py") == Result(0, "All checks passed!\n", "")


def test_concise_is_one_line_per_finding(run) -> None:
    write("a.py")
    write("b.py")
    result = run("--format", "concise", ".")
    lines = result.out.splitlines()
    assert [line.split(":")[0] for line in lines[:2]] == ["a.py", "b.py"]
    assert lines[2:] == ["Found 2 errors."]


def test_exit_zero(run) -> None:
    write("train.py")
    result = run("--exit-zero", "train.py")
    assert result.code == 0
    assert "LC900" in result.out


def test_version(run) -> None:
    assert run("--version").out == f"loopcheck {loopcheck.__version__}\n"


def test_a_missing_path_is_exit_2_and_nothing_is_linted(run) -> None:
    write("train.py")
    result = run("train.py", "nope.py")
    assert result.code == 2
    assert "nope.py: no such file or directory" in result.err
    assert result.out == ""


@pytest.mark.parametrize(
    "argv",
    [
        ["--select", "LC7", "."],
        ["--ignore", "LC9X", "."],
        ["--extend-select", "XYZ1", "."],
        ["--format", "xml", "."],
        ["--no-such-flag", "."],
    ],
)
def test_usage_errors_exit_2(run, argv: list[str]) -> None:
    write("train.py")
    result = run(*argv)
    assert result.code == 2
    assert result.out == ""
    assert "error" in result.err


def test_no_arguments_lints_the_current_directory(run) -> None:
    write("pkg/train.py")
    assert run().code == 1


def test_no_python_files_is_a_warning_not_an_error(run) -> None:
    Path("empty").mkdir()
    result = run("empty")
    assert result.code == 0
    assert "no Python files" in result.err


def test_statistics(run) -> None:
    write("a.py")
    write("b.py")
    result = run("--statistics", ".")
    assert result.out == "2\tLC900\tparse-error\nFound 2 errors.\n"
    stats = json.loads(run("--statistics", "--format", "json", ".").out)
    assert stats == [{"code": "LC900", "name": "parse-error", "count": 2}]


# -- commands ---------------------------------------------------------------------------------


def test_the_default_command_is_check() -> None:
    assert with_default_command(["train.py"]) == ["check", "train.py"]
    assert with_default_command(["--format", "json"]) == ["check", "--format", "json"]
    assert with_default_command(["rules"]) == ["rules"]
    assert with_default_command(["--version"]) == ["--version"]


def test_files_named_like_commands_can_be_linted(run) -> None:
    write("rules")
    write("check")
    assert run("check", "--format", "json", "rules", "check").findings() == {
        ("check", 1, "LC900"),
        ("rules", 1, "LC900"),
    }
    assert run("rules").out.startswith(min(rule.code for rule in ALL_RULES))


def test_rule_prints_the_docstring_by_code_or_name(run) -> None:
    rule = ALL_RULES[0]
    by_code = run("rule", rule.code.lower())
    assert by_code.code == 0
    assert by_code.out.startswith(f"# {rule.name} ({rule.code})\n")
    assert rule.doc() in by_code.out
    assert run("rule", rule.name).out == by_code.out


def test_unknown_rule_is_exit_2(run) -> None:
    result = run("rule", "LC999")
    assert result.code == 2
    assert "unknown rule" in result.err


def test_rules_lists_every_rule(run) -> None:
    result = run("rules")
    assert result.code == 0
    assert sorted(line.split()[0] for line in result.out.splitlines()) == sorted(
        rule.code for rule in ALL_RULES
    )
    records = json.loads(run("rules", "--format", "json").out)
    assert {record["code"] for record in records} == {rule.code for rule in ALL_RULES}
    fields = {"code", "name", "summary", "default_enabled", "fixable", "fix", "url"}
    assert set(records[0]) == fields


# -- machine-readable formats -------------------------------------------------------------------


def test_json_format(run) -> None:
    write("train.py")
    result = run("--format", "json", "train.py")
    assert result.code == 1
    (record,) = json.loads(result.out)
    assert set(record) == {
        "code",
        "message",
        "filename",
        "cell",
        "location",
        "end_location",
        "fix",
        "url",
        "noqa_row",
    }
    assert record["filename"] == "train.py"
    assert record["cell"] is None  # ruff's field: the cell number in a notebook
    assert record["location"] == {"row": 1, "column": broken_column()}
    assert record["noqa_row"] == 1
    assert record["fix"] is None


def test_json_of_a_clean_run_is_an_empty_list(run) -> None:
    write("train.py", CLEAN)
    assert run("--format", "json", "train.py") == Result(0, "[]\n", "")


def test_github_format(run) -> None:
    write("train.py")
    out = run("--format", "github", "train.py").out
    column = broken_column()
    assert out.startswith(
        f"::error file=train.py,line=1,col={column},endLine=1,endColumn={column},"
    )
    assert "title=LC900::" in out
    assert out.count("\n") == 1


def test_sarif_format(run) -> None:
    write("train.py")
    log = json.loads(run("--format", "sarif", "train.py").out)
    assert log["version"] == "2.1.0"
    (sarif_run,) = log["runs"]
    rule_ids = [rule["id"] for rule in sarif_run["tool"]["driver"]["rules"]]
    assert sorted(rule_ids) == sorted(rule.code for rule in ALL_RULES)
    (result,) = sarif_run["results"]
    assert rule_ids[result["ruleIndex"]] == result["ruleId"] == "LC900"
    location = result["locations"][0]["physicalLocation"]
    assert location["artifactLocation"]["uri"] == "train.py"
    assert location["region"]["startLine"] == 1


# -- files and directories ----------------------------------------------------------------------


def test_directories_are_searched_recursively_skipping_environments(run) -> None:
    write("src/pkg/train.py")
    write("src/pkg/notes.txt")
    write("src/pkg/stub.pyi")
    for skipped in (
        ".git",
        ".venv",
        "venv",
        "build",
        "dist",
        "node_modules",
        "__pycache__",
        ".tox",
    ):
        write(f"{skipped}/train.py")
    write("myenv/pyvenv.cfg", "home = /usr\n")
    write("myenv/lib/train.py")
    assert run("--format", "json", ".").findings() == {("src/pkg/train.py", 1, "LC900")}


def test_an_explicitly_named_file_is_always_linted(run) -> None:
    write(".venv/train.py")
    write("script")  # no .py suffix
    assert run("--format", "json", ".venv/train.py", "script").findings() == {
        (".venv/train.py", 1, "LC900"),
        ("script", 1, "LC900"),
    }


def test_a_file_named_twice_is_reported_once(run) -> None:
    write("src/train.py")
    assert len(json.loads(run("--format", "json", "src", "src/train.py", "./src").out)) == 1


def test_output_is_sorted_by_path(run) -> None:
    for name in ("b.py", "a/z.py", "c.py", "a/b.py"):
        write(name)
    records = json.loads(run("--format", "json", "c.py", ".").out)
    assert [record["filename"] for record in records] == ["a/b.py", "a/z.py", "b.py", "c.py"]


def test_collect_files_reports_missing_paths(tmp_path: Path) -> None:
    write("a.py")
    found = collect_files(["a.py", "gone", "gone.py"], root=tmp_path)
    assert found.files == ["a.py"]
    assert found.missing == ["gone", "gone.py"]


# -- the config table through the CLI ---------------------------------------------------------


def test_pyproject_exclude_and_per_file_ignores(run, tmp_path: Path) -> None:
    write(
        "pyproject.toml",
        '[tool.loopcheck]\nexclude = ["generated", "scripts/old_*.py"]\n'
        'per-file-ignores = { "legacy/*.py" = ["LC9"] }\n',
    )
    write("train.py")
    write("generated/model.py")
    write("scripts/old_train.py")
    write("scripts/train.py")
    write("legacy/train.py")
    write("legacy/sub/train.py")
    expected = {("train.py", 1, "LC900"), ("scripts/train.py", 1, "LC900")}
    expected.add(("legacy/sub/train.py", 1, "LC900"))  # '*' stays within one directory
    assert run("--format", "json", ".").findings() == expected
    # from a subdirectory the patterns stay relative to the pyproject.toml
    os.chdir(tmp_path / "scripts")
    assert run("--format", "json", ".").findings() == {("train.py", 1, "LC900")}


def test_excluded_files_named_explicitly_are_linted_unless_forced(run) -> None:
    write("pyproject.toml", '[tool.loopcheck]\nexclude = ["generated"]\n')
    write("generated/model.py")
    write(".venv/lib.py")
    assert run("generated/model.py", ".venv/lib.py").code == 1
    assert run("--force-exclude", "generated/model.py", ".venv/lib.py").code == 0


def test_config_selection_and_the_command_line_layer(run) -> None:
    write("pyproject.toml", '[tool.loopcheck]\nignore = ["LC9"]\n')
    write("train.py")
    assert run("train.py").code == 0
    assert run("--select", "LC900", "train.py").code == 1  # --select replaces the table's


def test_explicit_config_file(run) -> None:
    write("conf/loopcheck.toml", '[tool.loopcheck]\nignore = ["LC900"]\n')
    write("train.py")
    assert run("--config", "conf/loopcheck.toml", "train.py").code == 0
    missing = run("--config", "conf/nope.toml", "train.py")
    assert missing.code == 2
    assert "cannot read" in missing.err


def test_a_bad_config_is_exit_2_with_the_key_named(run) -> None:
    write("pyproject.toml", '[tool.loopcheck]\nselect = ["LC9"]\nignored = ["LC9"]\n')
    write("train.py")
    result = run("train.py")
    assert result.code == 2
    assert "unknown key 'ignored'" in result.err
    assert "Traceback" not in result.err


# -- stdin ------------------------------------------------------------------------------------


def feed_stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


def test_stdin(run, monkeypatch: pytest.MonkeyPatch) -> None:
    feed_stdin(monkeypatch, BROKEN.encode())
    assert run("--format", "json", "-").findings() == {("-", 1, "LC900")}


def test_stdin_filename_names_it_and_per_file_ignores_apply(
    run, monkeypatch: pytest.MonkeyPatch
) -> None:
    write("pyproject.toml", '[tool.loopcheck]\nper-file-ignores = { "legacy/*" = ["ALL"] }\n')
    feed_stdin(monkeypatch, BROKEN.encode())
    result = run("--format", "json", "--stdin-filename", "src/train.py", "-")
    assert result.findings() == {("src/train.py", 1, "LC900")}
    feed_stdin(monkeypatch, BROKEN.encode())
    assert run("--stdin-filename", "legacy/train.py", "-").code == 0


def test_force_exclude_applies_to_the_stdin_filename(run, monkeypatch: pytest.MonkeyPatch) -> None:
    write("pyproject.toml", '[tool.loopcheck]\nexclude = ["generated"]\n')
    feed_stdin(monkeypatch, BROKEN.encode())
    assert run("--stdin-filename", "generated/model.py", "-").code == 1
    feed_stdin(monkeypatch, BROKEN.encode())
    assert run("--force-exclude", "--stdin-filename", "generated/model.py", "-").code == 0


def test_stdin_text_format_shows_the_frame(run, monkeypatch: pytest.MonkeyPatch) -> None:
    feed_stdin(monkeypatch, BROKEN.encode())
    assert "1 | x = = 1  # backward" in run("-").out


# -- bad input never crashes ----------------------------------------------------------------------


def test_bad_files_are_findings_and_the_others_are_still_linted(
    run, monkeypatch: pytest.MonkeyPatch
) -> None:
    write("a_latin1.py", b"loss.backward()  # caf\xe9\n")
    write("b_binary.py", b"\x7fELF\x00\x00backward\x00")
    write("c_empty.py", b"")
    write("d_bom.py", b"\xef\xbb\xbfx = 1\n")
    write("e_locked.py", CLEAN)
    os.symlink("nowhere.py", "f_dangling.py")
    Path("g_dir.py").mkdir()
    write("h_broken.py")

    real_read_bytes = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self.name == "e_locked.py":
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    result = run("--format", "json", ".")
    assert result.code == 1
    assert result.err == ""
    assert result.findings() == {
        ("a_latin1.py", 1, "LC900"),
        ("b_binary.py", 1, "LC900"),
        ("e_locked.py", 1, "LC900"),
        ("f_dangling.py", 1, "LC900"),
        ("h_broken.py", 1, "LC900"),
    }
    messages = {r["filename"]: r["message"] for r in json.loads(result.out)}
    assert "Permission denied" in messages["e_locked.py"]
    # the text format, with its code frames, copes with the same files
    text = run(".")
    assert text.code == 1
    assert text.out.endswith("Found 5 errors.\n")


def test_a_broken_symlink_named_explicitly_is_a_finding(run) -> None:
    os.symlink("nowhere.py", "dangling.py")
    result = run("--format", "json", "dangling.py")
    assert result.code == 1
    assert result.findings() == {("dangling.py", 1, "LC900")}


def test_an_unlistable_directory_is_a_finding(run, monkeypatch: pytest.MonkeyPatch) -> None:
    write("ok/train.py")
    write("locked/train.py")
    real_scandir = os.scandir

    def scandir(path: str = ".") -> object:
        if os.path.basename(os.fspath(path)) == "locked":
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert run("--format", "json", ".").findings() == {
        ("locked", 1, "LC900"),
        ("ok/train.py", 1, "LC900"),
    }


def test_an_internal_error_in_one_file_is_a_finding(run, monkeypatch: pytest.MonkeyPatch) -> None:
    real_lint_source = runner.lint_source

    def lint_source(
        source: bytes, path: str, rules: tuple[type[Rule], ...], project: object = None
    ) -> list:
        if "boom" in path:
            raise RuntimeError("rule crashed")
        return real_lint_source(source, path, rules, project)

    monkeypatch.setattr(runner, "lint_source", lint_source)
    write("boom.py", CLEAN)
    write("train.py")
    result = run("--format", "json", ".")
    assert result.findings() == {("boom.py", 1, "LC900"), ("train.py", 1, "LC900")}
    messages = {r["filename"]: r["message"] for r in json.loads(result.out)}
    assert messages["boom.py"] == "internal error: RuntimeError: rule crashed"


def test_a_bug_in_the_cli_is_exit_2_with_a_message(run, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(*args: object, **kwargs: object) -> None:
        raise ValueError("oops")

    monkeypatch.setattr("loopcheck.cli.check_paths", crash)
    write("train.py")
    result = run("train.py")
    assert result.code == 2
    assert "internal error: ValueError: oops" in result.err


def test_a_closed_pipe_is_not_an_internal_error(
    run, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class ClosedPipe(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    write("train.py")
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["train.py"]) == 2
    assert capsys.readouterr().err == ""


# -- as a real process ------------------------------------------------------------------------


def python(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def test_python_dash_m_loopcheck(tmp_path: Path) -> None:
    write("train.py")
    write("clean.py", CLEAN)
    done = python("-m", "loopcheck", "--format", "json", ".", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert [record["filename"] for record in json.loads(done.stdout)] == ["train.py"]
    assert python("-m", "loopcheck", "clean.py", cwd=tmp_path).returncode == 0


def test_the_cli_does_not_import_torch(tmp_path: Path) -> None:
    write("train.py", "import torch\nloss.backward()\nopt.step()\n")
    code = (
        "import sys\n"
        "import loopcheck.cli\n"
        "assert 'torch' not in sys.modules, 'imported by loopcheck.cli'\n"
        "loopcheck.cli.main(['check', '--format', 'json', 'train.py'])\n"
        "assert 'torch' not in sys.modules, 'imported while linting'\n"
    )
    done = python("-c", code, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
