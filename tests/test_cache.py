"""The lint cache and worker processes: a warm run answers from the cache with the same output,
entries go stale with their file, their dependencies, the settings or the linter, a corrupt or
unwritable cache never breaks a run, and --jobs N prints what --jobs 1 prints."""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import pytest

from loopcheck import runner
from loopcheck.cache import (
    CACHE_DIR_ENV,
    CACHE_DIR_NAME,
    LintCache,
    cache_directory,
    content_hash,
)
from loopcheck.cli import main
from loopcheck.diagnostic import Diagnostic, Edit, Fix, Span

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures"

BUGGY = """\
import torch

for x, y in loader:
    loss = model(x).sum()
    loss.backward()
    optimizer.zero_grad()
    optimizer.step()
"""
FINDING = Diagnostic("a.py", 6, 5, "LC102", "m", "zero-grad-after-backward", 6, 26)


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(CACHE_DIR_ENV, raising=False)
    return tmp_path


@pytest.fixture
def lint_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths the analysis runs on, in this process."""
    calls: list[str] = []
    real = runner.lint_source

    def counting(
        source: bytes | str, path: str, rules: tuple, project: object = None
    ) -> list[Diagnostic]:
        calls.append(path)
        return real(source, path, rules, project)

    monkeypatch.setattr(runner, "lint_source", counting)
    return calls


def run(*argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["--jobs", "1", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def write_project(root: Path, files: int = 3) -> None:
    for i in range(files):
        (root / f"train_{i}.py").write_text(BUGGY if i % 2 == 0 else "x = 1\n")


# -- the cache on its own -----------------------------------------------------------------------


def test_an_entry_is_fresh_until_its_content_or_settings_change(tmp_path: Path) -> None:
    cache = LintCache(tmp_path / "cache")
    assert cache.lookup("a.py", "s", "h1", lambda _: None) is None
    cache.store("a.py", "s", "h1", (FINDING,), {})
    assert cache.lookup("a.py", "s", "h1", lambda _: None) == (FINDING,)
    assert LintCache(tmp_path / "cache").lookup("a.py", "s", "h1", lambda _: None) == (FINDING,)
    assert cache.lookup("a.py", "s", "h2", lambda _: None) is None  # the file changed
    assert cache.lookup("a.py", "other", "h1", lambda _: None) is None  # other settings
    assert cache.lookup("b.py", "s", "h1", lambda _: None) is None


def test_an_entry_is_stale_when_a_dependency_changes_or_leaves_the_run(tmp_path: Path) -> None:
    cache = LintCache(tmp_path / "cache")
    cache.store("a.py", "s", "h", (FINDING,), {"b.py": "hb", "c.py": None})
    states = {"b.py": "hb"}  # c.py was not linted then and is not now
    assert cache.lookup("a.py", "s", "h", states.get) == (FINDING,)
    assert cache.lookup("a.py", "s", "h", {"b.py": "hb2"}.get) is None  # b.py changed
    assert cache.lookup("a.py", "s", "h", {}.get) is None  # b.py gone from the run
    assert cache.lookup("a.py", "s", "h", {"b.py": "hb", "c.py": "hc"}.get) is None  # c.py came


def test_every_diagnostic_field_survives_the_cache(tmp_path: Path) -> None:
    fix = Fix("move it", (Edit("", 2, 1, 3, 1), Edit("    opt.zero_grad()\n", 5, 1, 5, 1)))
    full = Diagnostic(
        "nb.ipynb", 2, 3, "LC102", "m", "name", 4, 5, fix=fix, related=Span(6, 7, 8, 9), cell=3
    )
    unset = [f.name for f in fields(Diagnostic) if getattr(full, f.name) == f.default]
    assert unset == [], "a new Diagnostic field: set it here and make the cache keep it"
    cache = LintCache(tmp_path / "cache")
    cache.store("nb.ipynb", "s", "h", (full, FINDING), {})
    found = cache.lookup("nb.ipynb", "s", "h", lambda _: None)
    assert found is not None
    assert [asdict(d) for d in found] == [asdict(full), asdict(FINDING)]  # fix: no compare


def test_a_finding_json_cannot_hold_is_not_stored_and_not_a_crash(tmp_path: Path) -> None:
    cache = LintCache(tmp_path / "cache")
    odd = Diagnostic("a.py", 1, 1, "LC102", "m", cell=object())  # type: ignore[arg-type]
    cache.store("a.py", "s", "h", (odd,), {})
    assert cache.problem is not None and "cannot store" in cache.problem
    assert cache.lookup("a.py", "s", "h", lambda _: None) is None


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x00\xff garbage",
        b"[]",
        b'{"path": "a.py"}',
        b'{"path": "a.py", "content": "h", "dependencies": [], "diagnostics": []}',
        b'{"path": "a.py", "content": "h", "dependencies": {}, "diagnostics": [{"line": "1"}]}',
        b'{"path": "a.py", "content": "h", "dependencies": {}, "diagnostics": [{"evil": 1}]}',
        b'{"path": "a.py", "content": "h", "dependencies": {}, "diagnostics": [{}]}',
        b'{"path": "a.py", "content": "h", "dependencies": {}, "diagnostics": '
        b'[{"path": "a.py", "line": 1, "column": 1, "code": "X", "message": "m", "fix": "f"}]}',
        b'{"path": "a.py", "content": "h", "dependencies": {}, "diagnostics": '
        b'[{"path": "a.py", "line": 1, "column": 1, "code": "X", "message": "m", '
        b'"related": {"line": 1}}]}',
        b'{"path": "a.py", "content": "h", "dependencies": {}, "diagnostics": '
        b'[{"path": "a.py", "line": true, "column": 1, "code": "X", "message": "m"}]}',
        b"[" * 100_000,
    ],
)
def test_a_corrupt_or_foreign_entry_is_a_miss(tmp_path: Path, content: bytes) -> None:
    cache = LintCache(tmp_path / "cache")
    cache.store("a.py", "s", "h", (FINDING,), {})
    (entry,) = cache.entries.glob("*.json")
    entry.write_bytes(content)
    assert cache.lookup("a.py", "s", "h", lambda _: None) is None
    cache.store("a.py", "s", "h", (FINDING,), {})  # and is simply written again
    assert cache.lookup("a.py", "s", "h", lambda _: None) == (FINDING,)


def _store_repeatedly(directory: Path, message: str, times: int) -> None:
    cache = LintCache(directory)
    finding = Diagnostic("a.py", 1, 1, "LC900", message)
    for _ in range(times):
        cache.store("a.py", "s", "h", (finding,) * 50, {})


def test_concurrent_writers_never_leave_half_an_entry(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    _store_repeatedly(directory, "first", 1)
    context = multiprocessing.get_context("fork")
    writers = [
        context.Process(target=_store_repeatedly, args=(directory, message, 100))
        for message in ("one", "two")
    ]
    for writer in writers:
        writer.start()
    reader = LintCache(directory)
    seen = set()
    while any(writer.is_alive() for writer in writers):
        found = reader.lookup("a.py", "s", "h", lambda _: None)
        assert found is not None, "a reader saw a partly written entry"
        seen.add(found[0].message)
    for writer in writers:
        writer.join()
        assert writer.exitcode == 0
    assert seen <= {"first", "one", "two"}
    assert not list(reader.entries.glob(".tmp-*")), "no temporary file is left behind"


def test_the_directory_is_the_project_root_or_the_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cache_directory(tmp_path) == tmp_path / CACHE_DIR_NAME
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "elsewhere"))
    assert cache_directory(tmp_path) == tmp_path / "elsewhere"


# -- the cache in a run -------------------------------------------------------------------------


def test_a_warm_run_prints_the_same_without_linting_again(
    tmp_path: Path, lint_calls: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    write_project(tmp_path)
    cold = run(".", capsys=capsys)
    assert cold[0] == 1 and len(lint_calls) == 3
    assert (tmp_path / CACHE_DIR_NAME / ".gitignore").read_text().splitlines()[-1] == "*"
    assert (tmp_path / CACHE_DIR_NAME / "CACHEDIR.TAG").read_text().startswith("Signature: ")
    lint_calls.clear()
    assert run(".", capsys=capsys) == cold
    assert lint_calls == []
    for output_format in ("json", "sarif", "github"):  # code frames aside, nothing is lost
        assert run("--format", output_format, ".", capsys=capsys) == run(
            "--no-cache", "--format", output_format, ".", capsys=capsys
        )


def test_only_changed_files_are_linted_again(
    tmp_path: Path, lint_calls: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    write_project(tmp_path)
    run(".", capsys=capsys)
    lint_calls.clear()
    (tmp_path / "train_1.py").write_text(BUGGY)
    code, out, _ = run("--format", "concise", ".", capsys=capsys)
    assert lint_calls == ["train_1.py"]
    assert out.count("LC102") == 3


def test_settings_are_part_of_the_key(
    tmp_path: Path, lint_calls: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    write_project(tmp_path, files=1)
    assert run(".", capsys=capsys)[0] == 1
    assert run("--ignore", "LC102", ".", capsys=capsys)[0] == 0
    assert run(".", capsys=capsys)[0] == 1
    assert len(lint_calls) == 2  # the default selection, then the other one; then the cache


def test_no_cache_neither_reads_nor_writes(
    tmp_path: Path, lint_calls: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    write_project(tmp_path, files=1)
    run("--no-cache", ".", capsys=capsys)
    assert not (tmp_path / CACHE_DIR_NAME).exists()
    run(".", capsys=capsys)
    run("--no-cache", ".", capsys=capsys)
    assert len(lint_calls) == 3


def test_the_cache_lives_at_the_project_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.loopcheck]\nignore = []\n")
    (tmp_path / "src").mkdir()
    write_project(tmp_path / "src", files=1)
    monkeypatch.chdir(tmp_path / "src")
    run(".", capsys=capsys)
    assert (tmp_path / CACHE_DIR_NAME).is_dir()
    assert not (tmp_path / "src" / CACHE_DIR_NAME).exists()


def test_the_environment_variable_moves_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_project(tmp_path, files=1)
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "moved"))
    run(".", capsys=capsys)
    assert (tmp_path / "moved" / ".gitignore").is_file()
    assert not (tmp_path / CACHE_DIR_NAME).exists()


def test_an_unwritable_cache_is_one_warning_and_the_same_findings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_project(tmp_path)
    expected = run("--no-cache", ".", capsys=capsys)
    (tmp_path / "not-a-directory").write_text("")
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "not-a-directory"))
    code, out, err = run(".", capsys=capsys)
    assert (code, out) == expected[:2]
    assert err.count("warning: cannot write the cache") == 1


def test_a_corrupt_cache_is_linted_through(
    tmp_path: Path, lint_calls: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    write_project(tmp_path)
    expected = run(".", capsys=capsys)
    for entry in (tmp_path / CACHE_DIR_NAME).rglob("*.json"):
        entry.write_bytes(b"\x00 not json")
    lint_calls.clear()
    assert run(".", capsys=capsys) == expected
    assert len(lint_calls) == 3


def test_a_dependency_change_makes_the_dependent_file_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The seam for cross-file analysis: the findings of a file whose analysis read another
    linted file are kept only while that file is unchanged and still linted."""
    linted: list[str] = []
    real = runner.analyse

    def analyse(source, path, rules, files):  # train.py's analysis reads helpers.py
        linted.append(path)
        assert "helpers.py" in files.paths and "train.py" in files.paths
        found = real(source, path, rules, files)
        reads = {"helpers.py"} if path == "train.py" else set()
        return runner.FileLint(found.diagnostics, frozenset(reads | {path}))

    monkeypatch.setattr(runner, "analyse", analyse)
    (tmp_path / "train.py").write_text(BUGGY)
    (tmp_path / "helpers.py").write_text("def helper():\n    pass\n")
    (tmp_path / "other.py").write_text("x = 1\n")
    run(".", capsys=capsys)
    assert sorted(linted) == ["helpers.py", "other.py", "train.py"]
    linted.clear()
    run(".", capsys=capsys)
    assert linted == []
    (tmp_path / "helpers.py").write_text("def helper():\n    return 1\n")
    run(".", capsys=capsys)
    assert sorted(linted) == ["helpers.py", "train.py"]
    linted.clear()
    run("train.py", "other.py", capsys=capsys)  # helpers.py is no longer in the run
    assert linted == ["train.py"]


# -- worker processes ---------------------------------------------------------------------------


@pytest.fixture
def pools(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, str]]]:
    """(workers, start method) of each process pool the runner starts."""
    started: list[tuple[int, str]] = []

    class RecordingPool(ProcessPoolExecutor):
        def __init__(self, max_workers: int, **kwargs: Any) -> None:
            started.append((max_workers, kwargs["mp_context"].get_start_method()))
            super().__init__(max_workers, **kwargs)

    monkeypatch.setattr(runner, "ProcessPoolExecutor", RecordingPool)
    yield started


def test_jobs_n_prints_exactly_what_jobs_1_prints(
    pools: list[int], capsys: pytest.CaptureFixture[str]
) -> None:
    # The text format holds everything: order, places, messages, code frames.
    argv = ["--no-cache", str(FIXTURES / "bugs"), str(FIXTURES / "notebooks")]
    serial = run(*argv, capsys=capsys)
    assert pools == []
    parallel = main(["--jobs", "2", *argv]), *capsys.readouterr()
    assert [workers for workers, _ in pools] == [2]
    assert parallel == serial
    assert serial[0] == 1 and "train_buggy.ipynb:cell 5:" in serial[1]


def test_a_handful_of_files_is_linted_without_a_pool(
    tmp_path: Path, pools: list[int], capsys: pytest.CaptureFixture[str]
) -> None:
    write_project(tmp_path, files=3)
    assert main(["--jobs", "8", "--no-cache", "."]) == 1
    assert pools == []


def test_parallel_results_fill_the_cache(
    tmp_path: Path, pools: list[int], lint_calls: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    write_project(tmp_path, files=12)
    cold = main(["--jobs", "2", "."]), *capsys.readouterr()
    assert len(pools) == 1 and lint_calls == []  # linted in the workers
    assert run(".", capsys=capsys) == cold
    assert lint_calls == []  # and answered from the cache


def test_a_process_running_other_threads_does_not_fork_its_workers(
    tmp_path: Path, pools: list[tuple[int, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    write_project(tmp_path, files=12)
    serial = run("--no-cache", ".", capsys=capsys)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        parallel = main(["--jobs", "2", "--no-cache", "."]), *capsys.readouterr()
    finally:
        stop.set()
        other.join()
    assert pools == [(2, "forkserver")]
    assert parallel == serial


@pytest.mark.parametrize("jobs", ["0", "-1", "two"])
def test_jobs_must_be_a_positive_number(jobs: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--jobs", jobs, "."]) == 2
    assert "positive number of processes" in capsys.readouterr().err


def test_default_jobs_is_the_usable_cores() -> None:
    assert 1 <= runner.default_jobs() <= (os.cpu_count() or 1)


def test_a_cache_key_covers_the_whole_content() -> None:
    assert content_hash(b"a" * 10_000) != content_hash(b"a" * 9_999 + b"b")
    assert json.dumps(content_hash(b"x"))  # a plain string, stored as JSON
