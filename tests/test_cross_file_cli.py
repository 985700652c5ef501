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


BUGS = PROJECTS.parent / "bugs"


def test_a_directory_of_scripts_reports_what_each_script_alone_reports(tmp_path: Path) -> None:
    # Scripts linted together import nothing from one another: a public function that no other
    # file names is judged as the top of its program, as when its file is linted alone.
    names = [
        "lc105_gan_generator_never_steps.py",
        "lc502_periodic_eval_beside_no_grad.py",
        "lc502_accelerate_eval_inline.py",
        "lc101_plain_loop.py",
    ]
    for name in names:
        shutil.copy(BUGS / name, tmp_path / name)
    alone: set[tuple[str, int, str]] = set()
    for name in names:
        alone |= findings(loopcheck("--format", "json", "--no-cache", name, cwd=tmp_path))
    together = loopcheck("--format", "json", "--no-cache", ".", cwd=tmp_path)
    assert {code for _, _, code in alone} == {"LC101", "LC105", "LC502"}
    assert findings(together) == alone


def test_a_cached_finding_goes_stale_when_another_file_starts_calling_its_function(
    tmp_path: Path,
) -> None:
    (tmp_path / "evaluation.py").write_text(
        "import torch\n\n\n"
        "def evaluate(model, loader):\n"
        "    model.eval()\n"
        "    for x, y in loader:\n"
        "        print(torch.nn.functional.mse_loss(model(x), y).item())\n"
    )
    (tmp_path / "train.py").write_text("import torch\n\n\ndef main():\n    pass\n")
    # nothing calls evaluate(): it runs with gradients on
    cold = loopcheck("--format", "json", ".", cwd=tmp_path)
    assert findings(cold) == {("evaluation.py", 7, "LC502")}
    # the training script now calls it under no_grad: the evaluator's cached entry is stale
    (tmp_path / "train.py").write_text(
        "import torch\n\nfrom evaluation import evaluate\n\n\n"
        "def main(model, loader):\n"
        "    with torch.no_grad():\n"
        "        evaluate(model, loader)\n"
    )
    warm = loopcheck("--format", "json", ".", cwd=tmp_path)
    assert warm.returncode == 0, warm.stdout
    assert findings(warm) == set()


def test_a_loop_that_makes_no_move_itself_goes_stale_when_its_helper_starts_stepping(
    tmp_path: Path,
) -> None:
    # train.py mentions no move: it is analysed only because it imports a helper that may make
    # one, and whether it does is read from helpers.py, on which its cached answer depends
    (tmp_path / "train.py").write_text(
        "from helpers import update\n\n\n"
        "def main(model, optimizer, loader):\n"
        "    for batch in loader:\n"
        "        update(model, optimizer, batch)\n"
    )
    (tmp_path / "helpers.py").write_text(
        "def update(model, optimizer, batch):\n    return model(batch)\n"
    )
    cold = loopcheck("--format", "json", ".", cwd=tmp_path)
    assert cold.returncode == 0, cold.stdout
    # the helper now backprops and steps, and the loop never clears
    (tmp_path / "helpers.py").write_text(
        "def update(model, optimizer, batch):\n"
        "    model(batch).mean().backward()\n"
        "    optimizer.step()\n"
    )
    warm = loopcheck("--format", "json", ".", cwd=tmp_path)
    assert findings(warm) == {("helpers.py", 3, "LC101")}, warm.stdout


def test_a_file_that_imports_only_move_free_names_is_not_analysed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (the gate that spares a whole package's worth of parses: what each file imports from the
    # linted files is read from Python's own parse; libcst parses only what may take part)
    from loopcheck.static import Project

    (tmp_path / "config.py").write_text("class Config:\n    lr = 0.1\n")
    (tmp_path / "steps.py").write_text(
        "def update(model, optimizer, batch):\n"
        "    model(batch).mean().backward()\n"
        "    optimizer.step()\n"
    )
    uses_config = b"from config import Config\n\nprint(Config.lr)\n"
    uses_steps = b"from . import steps\n\nfor b in data:\n    steps.update(m, o, b)\n"
    paths = [str(tmp_path / n) for n in ("config.py", "steps.py", "a.py", "b.py")]
    project = Project(paths)
    project.begin(paths[2])
    assert not project.imports_helpers(uses_config, paths[2])
    assert str(tmp_path / "config.py") in project.reads  # were it to change, so might the answer
    project.begin(paths[3])
    assert project.imports_helpers(uses_steps, paths[3])


HELPER_CHAIN = {
    # the loop's helper reaches the step three files away; each file makes some move itself
    "main.py": "import torch\n\nfrom x import outer\n\n"
    "model = torch.nn.Linear(2, 1)\n"
    "opt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
    "for batch in torch.randn(10, 4, 2):\n    outer(model, opt, batch)\n",
    "x.py": "from y import middle\n\n\ndef outer(model, opt, batch):\n"
    "    middle(model, opt, batch)\n\n\ndef reset(opt):\n    opt.zero_grad()\n",
    "y.py": "from z import train_step\n\n\ndef middle(model, opt, batch):\n"
    "    train_step(model, opt, batch)\n\n\ndef reset(opt):\n    opt.zero_grad()\n",
    "z.py": "def train_step(model, opt, batch):\n    loss = model(batch).sum()\n"
    "    loss.backward()\n    opt.step()\n",
}


def test_findings_do_not_depend_on_which_files_one_process_linted_before(
    tmp_path: Path,
) -> None:
    # How far a file's index looks into its imports depends on what it is indexed for, not on
    # whether this process linted it already: a middle file linted first must not make the
    # loop's helper chain look deeper than when the loop's file comes first.
    for name, text in HELPER_CHAIN.items():
        (tmp_path / name).write_text(text)
    first = loopcheck("--format", "json", "--no-cache", "--jobs", "1", *HELPER_CHAIN, cwd=tmp_path)
    orders = (["y.py", "main.py", "x.py", "z.py"], ["x.py", "y.py", "z.py", "main.py"])
    for order in orders:
        other = loopcheck("--format", "json", "--no-cache", "--jobs", "1", *order, cwd=tmp_path)
        assert findings(other) == findings(first), order
