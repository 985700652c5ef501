"""How fast the linter goes through a large real tree, beside TorchFix on the same tree.

By default the tree is the installed torch package's Python files (thousands of files, most of
which hold no training loop: the prefilter's job). Both tools run as command-line programs on
the same file list, one process each, measured in the same run; the in-process figure shows
where loopcheck's own time goes (prefilter, parse, analysis).

    python benchmarks/lint_speed.py [--tree DIR] [--limit N] [--repeat K]
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from pathlib import Path


def default_tree() -> Path:
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        sys.exit("torch is not installed: pass --tree DIR")
    return Path(spec.origin).parent


def python_files(tree: Path, limit: int | None) -> list[Path]:
    files = sorted(p for p in tree.rglob("*.py") if p.is_file())
    return files[:limit] if limit else files


def in_process(files: list[Path]) -> dict[str, float]:
    """loopcheck's library call on every file, and how many files passed the prefilter."""
    from loopcheck.api import _PREFILTER, lint_source

    sources = [p.read_bytes() for p in files]
    start = time.perf_counter()
    findings = sum(len(lint_source(src, str(p))) for p, src in zip(files, sources, strict=True))
    seconds = time.perf_counter() - start
    parsed = sum(1 for src in sources if _PREFILTER.search(src))
    return {"seconds": seconds, "parsed": parsed, "findings": findings}


def timed(command: list[str]) -> tuple[float, int]:
    start = time.perf_counter()
    result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start, result.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=None, help="directory to lint")
    parser.add_argument("--limit", type=int, default=None, help="lint only the first N files")
    parser.add_argument("--repeat", type=int, default=1, help="runs per tool (best is kept)")
    args = parser.parse_args()

    tree = args.tree or default_tree()
    files = python_files(tree, args.limit)
    lines = sum(p.read_bytes().count(b"\n") for p in files)
    print(f"tree: {tree}  ({len(files)} files, {lines} lines)")

    stats = in_process(files)
    print(
        f"loopcheck (in process): {stats['seconds']:.2f} s, "
        f"{len(files) / stats['seconds']:.0f} files/s, {lines / stats['seconds']:.0f} lines/s; "
        f"{stats['parsed']:.0f} of {len(files)} files passed the prefilter and were parsed; "
        f"{stats['findings']:.0f} findings"
    )

    ours = [sys.executable, "-m", "loopcheck", "check", "--exit-zero", "--format", "concise"]
    ours += [str(p) for p in files]
    best_ours = min(timed(ours)[0] for _ in range(args.repeat))
    print(
        f"loopcheck (CLI):        {best_ours:.2f} s, {len(files) / best_ours:.0f} files/s, "
        f"{lines / best_ours:.0f} lines/s"
    )

    if importlib.util.find_spec("torchfix") is None:
        print("TorchFix is not installed (pip install torchfix): no ratio")
        return
    theirs = [sys.executable, "-m", "torchfix", "--jobs", "1", *[str(p) for p in files]]
    best_theirs = min(timed(theirs)[0] for _ in range(args.repeat))
    print(
        f"TorchFix (CLI, 1 job):  {best_theirs:.2f} s, {len(files) / best_theirs:.0f} files/s, "
        f"{lines / best_theirs:.0f} lines/s"
    )
    print(f"ratio: loopcheck is {best_theirs / best_ours:.1f}x the speed of TorchFix")


if __name__ == "__main__":
    main()
