"""``loopcheck run``: real scripts run unmodified in subprocesses, every optimizer watched."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("torch")

import loopcheck  # noqa: E402
from loopcheck.runtime.run import main  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(loopcheck.__file__))
MAIN = "import sys; from loopcheck.runtime.run import main; sys.exit(main(sys.argv[1:]))"

# A small AMP training script; the placeholders pick its bug.
SCRIPT = """
import argparse
import sys

import torch
from torch import nn
from torch.nn.functional import mse_loss

torch.set_num_threads(1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5)
    scaler = torch.amp.GradScaler("cpu")
    x = torch.randn(64, 8)
    y = x.sum(1, keepdim=True)
    for step in range(args.steps):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = mse_loss(model(x).float(), y)
        scaler.scale(loss).backward()
        {unscale}
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        {sched_before}
        scaler.step(opt)
        scaler.update()
        {sched_after}
    print("final loss", loss.item())
    sys.exit({exit_code})


if __name__ == "__main__":
    main()
"""

CLEAN = {
    "unscale": "scaler.unscale_(opt)",
    "sched_before": "pass",
    "sched_after": "sched.step()",
    "exit_code": 0,
}


def write(folder, **changes):
    script = folder / "train.py"
    script.write_text(SCRIPT.format(**{**CLEAN, **changes}))
    return script


def line_of(script, text: str) -> int:
    lines = script.read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.strip() == text)


def test_in_a_fresh_interpreter_findings_warn_report_and_exit_1(tmp_path):
    script = write(tmp_path, sched_before="sched.step()", sched_after="pass")
    result = subprocess.run(
        [sys.executable, "-c", MAIN, str(script), "--steps", "6"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": ROOT},
        timeout=180,
    )
    assert result.returncode == 1, result.stderr
    assert "final loss" in result.stdout  # warn mode lets the script finish
    where = f"{script}:{line_of(script, 'sched.step()')}"
    assert f"{where}: LoopcheckWarning: LC401" in result.stderr
    report = result.stderr.split("loopcheck watch:")[1]
    assert f"LC401 scheduler-before-optimizer at {where}" in report.split("findings (1)")[1]


def test_clean_script_keeps_its_exit_code_and_output(tmp_path, capsys):
    script = write(tmp_path, exit_code=3)
    assert main([str(script), "--steps", "6"]) == 3
    out, err = capsys.readouterr()
    assert "final loss" in out
    assert "no findings" in err
    # everything is watched from its construction: the first iteration is seen whole
    trace = err.split("trace (events up to and including each optimizer step):\n")[1]
    first, rest = trace.splitlines()[:2]
    assert first.split() == "step 0 zero forward backward unscale clip scaler.step".split()
    assert rest.split()[:4] == ["steps", "1-5", "(x5)", "scaler.update"]


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")
def test_scheduler_and_scaler_are_found_through_the_optimizer(tmp_path, capsys):
    script = write(tmp_path, unscale="pass", sched_before="sched.step()", sched_after="pass")
    assert main(["--format", "json", "--mode", "record", str(script), "--steps", "6"]) == 1
    report = json.loads(capsys.readouterr().err)
    assert {f["code"] for f in report["findings"]} == {"LC301", "LC401"}
    assert report["steps"] == [6]


def test_raise_mode_stops_the_script(tmp_path, capsys):
    script = write(tmp_path, unscale="pass")
    assert main(["--mode", "raise", str(script), "--steps", "6"]) == 1
    out, err = capsys.readouterr()
    assert "LoopcheckError: LC301" in err
    assert "final loss" not in out


def test_missing_script(tmp_path, capsys):
    assert main([str(tmp_path / "nope.py")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_main_in_process_restores_argv_and_says_nothing_was_checked(tmp_path, capsys):
    script = tmp_path / "noop.py"
    script.write_text(textwrap.dedent("import sys\nprint(sys.argv)\n"))
    argv, path = sys.argv[:], sys.path[:]
    assert main([str(script), "a", "--b"]) == 3  # no optimizer stepped: not a pass
    assert sys.argv == argv and sys.path == path
    out, err = capsys.readouterr()
    assert f"['{script}', 'a', '--b']" in out
    assert "nothing was checked: no optimizer stepped" in err


PLAIN = """
import torch

torch.manual_seed(0)
model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x, y = torch.randn(32, 4), torch.randn(32, 1)
for _ in range(6):
    {body}
"""


@pytest.mark.parametrize(
    ("moves", "code"),
    [
        # no model is given to `run`: a module's forward still tells where an iteration begins
        (
            [
                "loss = torch.nn.functional.mse_loss(model(x), y)",
                "loss.backward()",
                "opt.zero_grad()",
                "opt.step()",
            ],
            "LC102",
        ),
        (
            [
                "opt.zero_grad()",
                "loss = torch.nn.functional.mse_loss(model(x), y)",
                "opt.step()",
                "loss.backward()",
            ],
            "LC103",
        ),
    ],
)
def test_run_tells_a_clear_before_step_from_a_step_before_backward(tmp_path, capsys, moves, code):
    script = tmp_path / "plain.py"
    script.write_text(PLAIN.format(body="\n    ".join(moves)))
    assert main(["--format", "json", "--mode", "record", str(script)]) == 1
    report = json.loads(capsys.readouterr().err)
    assert {f["code"] for f in report["findings"]} == {code}


ONE_ITERATION = """
import torch

torch.manual_seed(0)
model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x, y = torch.randn(32, 4), torch.randn(32, 1)
loss = torch.nn.functional.mse_loss(model(x), y)
loss.backward()
opt.zero_grad()
opt.step()
"""


def test_the_command_checks_the_first_iteration_and_writes_the_report_file(tmp_path):
    script = tmp_path / "one.py"
    script.write_text(ONE_ITERATION)
    report = tmp_path / "out" / "report.json"
    report.parent.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "loopcheck", "run", "--report", str(report), str(script)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": ROOT},
        timeout=180,
    )
    assert result.returncode == 1, result.stderr
    assert "loopcheck watch:" not in result.stderr  # the report went to the file
    assert f"report written to {report} (1 finding(s))" in result.stderr
    (finding,) = json.loads(report.read_text())["findings"]
    assert (finding["code"], finding["step"], finding["line"]) == ("LC102", 0, 10)


LONG = """
import torch

torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
opt = torch.optim.SGD(net[0].parameters(), lr=0.1)  # the last layer is left out
x, y = torch.randn(32, 4), torch.randn(32, 1)
try:
    for step in range(10**6):
        opt.zero_grad()
        torch.nn.functional.mse_loss(net(x), y).backward()
        opt.step()
finally:
    print("cleanup ran after", step, "steps")
"""


def test_max_steps_ends_the_script_cleanly_and_orphans_are_found(tmp_path, capsys):
    script = tmp_path / "long.py"
    script.write_text(LONG)
    report, picture = tmp_path / "report.txt", tmp_path / "run.html"
    argv = ["--mode", "record", "--max-steps", "3", "--report", str(report), "--html", str(picture)]
    assert main([*argv, str(script)]) == 1
    out, err = capsys.readouterr()
    assert "cleanup ran after 3 steps" in out
    text = report.read_text()
    assert "steps (3)" in text
    assert "LC602 orphan-gradients" in text and "2.weight, 2.bias" in text
    page = picture.read_text()
    assert page.startswith("<!DOCTYPE html>") and 'data-codes="LC602"' in page
    assert f"picture written to {picture}" in err


@pytest.mark.parametrize("steps", ["0", "x"])
def test_bad_max_steps_is_a_usage_error(tmp_path, capsys, steps):
    script = tmp_path / "one.py"
    script.write_text(ONE_ITERATION)
    assert main(["--max-steps", steps, str(script)]) == 2
    assert "--max-steps" in capsys.readouterr().err
