"""Cross-file analysis through the real command: a directory linted as a whole follows calls
between its files, places each finding in the file it lies in (judged by that file's noqa and
settings), gives the same output with one or several jobs, and a cache entry goes stale when a
file it read changes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROJECTS = Path(__file__).resolve().parent.parent / "fixtures" / "projects"


def loopcheck(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loopcheck", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def findings(result: subprocess.CompletedProcess[str]) -> set[tuple[str, int, str]]:
    return {
        (Path(d["filename"]).as_posix(), d["location"]["row"], d["code"])
        for d in json.loads(result.stdout)
    }


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the project whose helper steps without any clear in the caller's loop."""
    root = tmp_path / "proj"
    shutil.copytree(PROJECTS / "lc101_helper_steps_never_cleared", root)
    return root


def test_a_finding_lies_in_the_helper_file_the_loop_calls(project: Path) -> None:
    result = loopcheck("--format", "json", "--no-cache", ".", cwd=project)
    assert result.returncode == 1, result.stderr
    assert findings(result) == {("trainlib/steps.py", 11, "LC101")}
    # the helper alone, without the loop that calls it, holds no bug
    alone = loopcheck("--format", "json", "--no-cache", "trainlib/steps.py", cwd=project)
    assert alone.returncode == 0 and findings(alone) == set()


def test_the_helper_files_noqa_silences_it(project: Path) -> None:
    steps = project / "trainlib" / "steps.py"
    lines = steps.read_text().splitlines()
    lines[10] = lines[10].split("#")[0].rstrip() + "  # noqa: LC101"
    steps.write_text("\n".join(lines) + "\n")
    result = loopcheck("--format", "json", "--no-cache", ".", cwd=project)
    assert result.returncode == 0, result.stdout
    assert findings(result) == set()


def test_one_job_and_two_jobs_print_the_same(project: Path) -> None:
    # enough files for a worker pool: the project plus copies of its loop
    for i in range(12):
        shutil.copy(project / "train.py", project / f"train_copy_{i}.py")
    one = loopcheck("--format", "json", "--no-cache", "--jobs", "1", ".", cwd=project)
    two = loopcheck("--format", "json", "--no-cache", "--jobs", "2", ".", cwd=project)
    assert one.returncode == two.returncode == 1
    assert one.stdout == two.stdout
    assert ("trainlib/steps.py", 11, "LC101") in findings(one)


def test_a_cached_loop_goes_stale_when_the_helper_it_read_changes(project: Path) -> None:
    cold = loopcheck("--format", "json", ".", cwd=project)
    warm = loopcheck("--format", "json", ".", cwd=project)
    assert findings(cold) == findings(warm) == {("trainlib/steps.py", 11, "LC101")}
    # the helper now clears before the forward pass: the loop's entry must not be reused
    steps = project / "trainlib" / "steps.py"
    text = steps.read_text()
    body_start = text.index("    loss = ") if "    loss = " in text else None
    assert body_start is not None, text
    steps.write_text(text[:body_start] + "    optimizer.zero_grad()\n" + text[body_start:])
    fixed = loopcheck("--format", "json", ".", cwd=project)
    assert fixed.returncode == 0, fixed.stdout
    assert findings(fixed) == set()
