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
    # the optimizer is found at its first step; the next ones are seen whole
    assert "steps 1-5 (x5)" in err
    assert "zero backward unscale clip scaler.step" in err


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


def test_main_in_process_restores_argv(tmp_path, capsys):
    script = tmp_path / "noop.py"
    script.write_text(textwrap.dedent("import sys\nprint(sys.argv)\n"))
    argv, path = sys.argv[:], sys.path[:]
    assert main([str(script), "a", "--b"]) == 0
    assert sys.argv == argv and sys.path == path
    assert f"['{script}', 'a', '--b']" in capsys.readouterr().out


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
