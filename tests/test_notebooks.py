"""Jupyter notebooks: the fixtures through the real CLI, cells joined as one program, findings
placed by cell, IPython syntax neutralised line for line, and notebooks that cannot be read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from annotations import expected_findings

from loopcheck.config import Config
from loopcheck.notebook import cell_lines, neutralise, read_notebook
from loopcheck.runner import check_source

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "fixtures" / "notebooks"
BUGGY = NOTEBOOKS / "train_buggy.ipynb"
CLEAN = NOTEBOOKS / "train_clean.ipynb"

LOOP = """\
for x, y in loader:
    loss = model(x).sum()
    loss.backward()
    optimizer.zero_grad()
    optimizer.step()
"""


def notebook(*cells: str | tuple[str, str], language: str | None = "python") -> bytes:
    """A notebook's bytes; a cell is its code, or (cell_type, source)."""
    made = []
    for cell in cells:
        kind, source = cell if isinstance(cell, tuple) else ("code", cell)
        made.append({"cell_type": kind, "metadata": {}, "source": source.splitlines(True)})
    metadata = {} if language is None else {"language_info": {"name": language}}
    return json.dumps({"cells": made, "metadata": metadata, "nbformat": 4}).encode()


def lint(raw: bytes | str, path: str = "nb.ipynb") -> list[tuple[int | None, int, int, str]]:
    return [(d.cell, d.line, d.column, d.code) for d in check_source(raw, path, Config())]


def expected_in(path: Path) -> set[tuple[int, int, int, str]]:
    """(cell, line, column, code) from the `# error:` comments in each code cell."""
    found = set()
    for number, lines in cell_lines(path.read_bytes()).items():
        source = "".join(line + "\n" for line in neutralise(lines))
        found |= {(number, *expected) for expected in expected_findings(source)}
    return found


def loopcheck(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "loopcheck", "--no-cache", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


# -- the fixtures, through the real command ---------------------------------------------------


def test_buggy_notebook_reports_each_bug_in_its_cell() -> None:
    want = expected_in(BUGGY)
    assert len({cell for cell, *_ in want}) >= 2, "the fixture has bugs in two cells"
    done = loopcheck("--format", "json", str(BUGGY))
    assert done.returncode == 1, done.stderr
    records = json.loads(done.stdout)
    got = {(r["cell"], r["location"]["row"], r["location"]["column"], r["code"]) for r in records}
    assert got == want

    text = loopcheck(str(BUGGY))
    assert text.returncode == 1, text.stderr
    cells = cell_lines(BUGGY.read_bytes())
    for cell, line, column, code in want:
        assert f"{BUGGY}:cell {cell}:{line}:{column}: {code} " in text.stdout
        assert f"{line} | {cells[cell][line - 1]}\n" in text.stdout  # the frame: the cell's line


def test_buggy_notebook_in_sarif_and_github_formats() -> None:
    want = {(cell, line, code) for cell, line, _, code in expected_in(BUGGY)}
    sarif = json.loads(loopcheck("--format", "sarif", str(BUGGY)).stdout)
    results = sarif["runs"][0]["results"]
    got = {
        (
            r["locations"][0]["properties"]["cell"],
            r["locations"][0]["physicalLocation"]["region"]["startLine"],
            r["ruleId"],
        )
        for r in results
    }
    assert got == want
    github = loopcheck("--format", "github", str(BUGGY)).stdout.splitlines()
    assert len(github) == len(want)
    for cell, line, code in want:
        assert any(
            f",line={line}," in row and f"title={code}::cell {cell}: " in row for row in github
        )


def test_the_readme_prints_what_the_command_prints() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    command = "loopcheck fixtures/notebooks/train_buggy.ipynb"
    shown = readme.split(f"{command}\n```\n\n```text\n", 1)[1].split("```", 1)[0]
    done = loopcheck(command.split()[1])
    assert done.stdout == shown


def test_clean_notebook_is_silent() -> None:
    assert expected_in(CLEAN) == set()
    done = loopcheck(str(CLEAN))
    assert (done.returncode, done.stdout, done.stderr) == (0, "All checks passed!\n", "")


def test_directories_pick_up_notebooks_but_not_checkpoints(tmp_path: Path) -> None:
    (tmp_path / "train.ipynb").write_bytes(notebook(LOOP))
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / ".ipynb_checkpoints" / "train-checkpoint.ipynb").write_bytes(notebook(LOOP))
    (tmp_path / "notes.txt").write_text(LOOP)
    done = loopcheck("--format", "concise", ".", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    first, last = done.stdout.splitlines()
    assert first.startswith("train.ipynb:cell 1:4:5: LC102 ")
    assert last == "Found 1 error."


def test_stdin_named_as_a_notebook_is_read_as_one(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "loopcheck", "--format", "json", "-", "--stdin-filename", "a.ipynb"],
        input=notebook("import torch", LOOP).decode(),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    ((record),) = json.loads(done.stdout)
    assert (record["filename"], record["cell"], record["location"]["row"]) == ("a.ipynb", 2, 4)


# -- cells as one program -----------------------------------------------------------------------


def test_cells_run_as_one_program_and_are_numbered_as_jupyter_shows_them() -> None:
    raw = notebook(
        ("markdown", "# Setup"),
        "import torch\nmodel = torch.nn.Linear(2, 1)\n",
        "optimizer = torch.optim.SGD(model.parameters(), lr=0.1)",
        ("markdown", "# Train"),
        LOOP,
    )
    assert lint(raw) == [(5, 4, 5, "LC102")]  # markdown cells count: Jupyter's "cell 5"


def test_noqa_works_in_a_cell() -> None:
    silenced = LOOP.replace("optimizer.zero_grad()", "optimizer.zero_grad()  # noqa: LC102")
    assert lint(notebook(silenced)) == []
    other_code = LOOP.replace("optimizer.zero_grad()", "optimizer.zero_grad()  # noqa: LC101")
    assert lint(notebook(other_code)) == [(1, 4, 5, "LC102")]


def test_a_cell_that_does_not_compile_is_lc900_and_the_others_are_still_linted() -> None:
    raw = notebook("for x in loader\n    loss.backward()\n", LOOP)
    assert lint(raw) == [(1, 1, 16, "LC900"), (2, 4, 5, "LC102")]


def test_cells_compile_on_their_own_as_jupyter_compiles_them() -> None:
    # An open bracket at the end of one cell does not swallow the next one.
    raw = notebook("x = (1,\n", LOOP)
    assert lint(raw) == [(2, 4, 5, "LC102")]  # cell 1 never mentions a training move


def test_windows_line_endings_and_a_source_given_as_one_string() -> None:
    document = json.loads(notebook())
    document["cells"] = [{"cell_type": "code", "source": LOOP.replace("\n", "\r\n")}]
    assert lint(json.dumps(document)) == [(1, 4, 5, "LC102")]


def test_top_level_await_is_notebook_python() -> None:
    assert lint(notebook("await warm_up(model)\n" + LOOP)) == [(1, 5, 5, "LC102")]


@pytest.mark.parametrize(
    "raw",
    [
        notebook(),
        b"",
        b"  \n",
        notebook(("markdown", "only text")),
        notebook(LOOP, language="julia"),
        notebook("import torch\n%matplotlib inline\n"),
    ],
    ids=["no-cells", "empty-file", "blank-file", "markdown-only", "other-language", "no-loop"],
)
def test_notebooks_with_nothing_to_check_are_fine(raw: bytes) -> None:
    assert lint(raw) == []


@pytest.mark.parametrize(
    ("raw", "place", "message"),
    [
        (b'{"cells": [', (1, 12), "not valid JSON"),
        (b'{\n  "cells": [}\n', (2, 13), "not valid JSON"),
        (b"\xff\xfe{}", (1, 1), "not valid UTF-8"),
        (b"[1, 2]", (1, 1), "not a Jupyter notebook"),
        (b'{"metadata": {}}', (1, 1), "not a Jupyter notebook"),
        (b'{"worksheets": [], "nbformat": 3}', (1, 1), "format 3"),
        (b'{"cells": [1]}', (1, 1), "cell 1 is not a JSON object"),
        (b'{"cells": [{"cell_type": "code", "source": 3}]}', (1, 1), "cell 1: its source"),
        (b"[" * 100_000, (1, 1), "not valid JSON"),
    ],
    ids=[
        "truncated",
        "bad-json-line-2",
        "not-utf8",
        "a-list",
        "no-cells",
        "nbformat-3",
        "cell-not-object",
        "source-not-text",
        "deep-nesting",
    ],
)
def test_a_file_that_is_not_a_usable_notebook_is_lc900(
    raw: bytes, place: tuple[int, int], message: str
) -> None:
    (found,) = check_source(raw, "nb.ipynb", Config())
    assert (found.code, found.cell, (found.line, found.column)) == ("LC900", None, place)
    assert message in found.message


# -- IPython syntax -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "replacement"),
    [
        ("%matplotlib inline", "pass"),
        ("    %time train_one_epoch()", "    pass"),
        ("!pip install -q torch", "pass"),
        ("files = !ls data", "files = None"),
        ("a, b = %sx echo 1 2", "a, b = None"),
        ("optimizer?", "pass"),
        ("torch.optim.AdamW??", "pass"),
        ("?model", "pass"),
        ("loss.backward()  # why?", "loss.backward()  # why?"),
        ("x = a % b", "x = a % b"),
        ("x != y", "x != y"),
        ("count %= 3", "count %= 3"),
    ],
)
def test_statement_position_ipython_lines_become_python(line: str, replacement: str) -> None:
    assert neutralise([line]) == (replacement,)


def test_lines_inside_brackets_strings_and_continuations_are_python() -> None:
    lines = [
        "total = (a",
        "    % b)",
        "flag = (x",
        "    != y)",
        'doc = """',
        "!not a shell line",
        '"""',
        "s = 'it''s' + \\",
        "    %notmagic",
        "%magic \\",
        "    continued magic",
        "after = 1",
    ]
    assert neutralise(lines) == (
        *lines[:8],
        "    %notmagic",
        "pass",
        "",
        "after = 1",
    )


def test_cell_magics_keep_python_bodies_and_blank_the_others() -> None:
    assert neutralise(["%%time", "loss.backward()"]) == ("", "loss.backward()")
    assert neutralise(["", "%%timeit -n 1", "f()"]) == ("", "", "f()")
    assert neutralise(["%%bash", "echo hi", "optimizer.step()"]) == ("", "", "")
    assert neutralise(["%%writefile train.py", "loss.backward()"]) == ("", "")


def test_line_numbers_are_kept_through_magics() -> None:
    raw = notebook("!nvidia-smi\n%load_ext autoreload\n" + LOOP)
    assert lint(raw) == [(1, 6, 5, "LC102")]


def test_the_program_keeps_every_cell_line_in_place() -> None:
    read = read_notebook(notebook("a = 1\n%ls\n", ("markdown", "x"), "b = 2\n!ls"))
    assert read is not None
    assert read.program == "a = 1\npass\nb = 2\npass\n"
    assert [cell.number for cell in read.cells] == [1, 3]
