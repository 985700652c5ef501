"""The pre-commit hook, run by the real pre-commit against a temporary git repository.

pre-commit is a dev dependency: it runs as ``python -m pre_commit`` from this interpreter, so the
test runs whether or not a virtualenv's ``bin`` is on PATH (and fails, not skips, without it).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "fixtures" / "notebooks"

BUGGY = """\
import torch

model = torch.nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for x, y in loader:
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    optimizer.zero_grad()
    optimizer.step()
"""


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


def test_hook_fails_on_a_bug_and_passes_on_the_fix(tmp_path: Path) -> None:
    repo = tmp_path / "user-repo"
    repo.mkdir()
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "dev@example.com")
    git(repo, "config", "user.name", "dev")
    (repo / "train.py").write_text(BUGGY)
    (repo / "explore.ipynb").write_bytes((NOTEBOOKS / "train_buggy.ipynb").read_bytes())
    git(repo, "add", "train.py", "explore.ipynb")
    env = {**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "cache")}

    def hook() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pre_commit", "try-repo", str(ROOT), "loopcheck"]
            + ["--files", "train.py", "explore.ipynb"],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    failed = hook()
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "train.py:8:5: LC102" in failed.stdout
    assert "explore.ipynb:cell 5:6:9: LC102" in failed.stdout  # notebooks are hooked too
    assert (repo / ".loopcheck_cache").is_dir()
    untracked = git(repo, "status", "--porcelain", "--untracked-files=all").splitlines()
    assert [line for line in untracked if line.startswith("??")] == []  # the cache ignores itself

    fixed = BUGGY.replace("    optimizer.zero_grad()\n", "").replace(
        "for x, y in loader:\n", "for x, y in loader:\n    optimizer.zero_grad()\n"
    )
    (repo / "train.py").write_text(fixed)
    (repo / "explore.ipynb").write_bytes((NOTEBOOKS / "train_clean.ipynb").read_bytes())
    git(repo, "add", "train.py", "explore.ipynb")
    passed = hook()
    assert passed.returncode == 0, passed.stdout + passed.stderr
