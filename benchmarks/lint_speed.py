"""How fast the linter goes through a large real tree: cold on one core, cold on every core, and
warm from the cache, beside TorchFix on the same tree, and on training-heavy files.

By default the tree is the installed torch package's Python files (thousands of files, most of
which hold no training loop: the prefilter's job). Every figure comes from the same run on the
same file list: the library in this process (where the time goes), then the command line as a
user runs it — with an empty cache and ``--jobs 1``, with an empty cache and all cores, and
again with the cache the last run left (an unchanged tree). The three command-line runs must
print the same findings; the script says so. The training-heavy set is the project's fixtures
(bugs, clean idioms, notebooks) plus the tree's files that hold a training step: every file
there goes through the full analysis.

With ``--against DIR`` (the root of another loopcheck checkout, e.g. a ``git worktree`` of
an older commit), the training-heavy files are also linted in process by both versions, each
in a fresh interpreter, alternating, best of ``--repeat``, and the ratio is printed: for all
of them, for the fixtures alone and for the tree's training files alone (``--tree`` a folder
of real training code to see the ratio on code as people write it).

    python benchmarks/lint_speed.py [--tree DIR] [--limit N] [--repeat K] [--jobs N]
                                    [--against DIR] [--heavy-only]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures"
TRAINING_STEP = [re.compile(p) for p in (rb"zero_grad", rb"\.backward\(", rb"\.step\(")]


def default_tree() -> Path:
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        sys.exit("torch is not installed: pass --tree DIR")
    return Path(spec.origin).parent


def python_files(tree: Path, limit: int | None) -> list[Path]:
    files = sorted(p for p in tree.rglob("*.py") if p.is_file())
    return files[:limit] if limit else files


def training_heavy(tree_files: list[Path]) -> list[Path]:
    """The fixtures and the tree's files that clear gradients, backprop and step."""
    fixtures = sorted(
        p for p in FIXTURES.rglob("*") if p.suffix in (".py", ".ipynb") and p.is_file()
    )
    steps = [p for p in tree_files if all(r.search(p.read_bytes()) for r in TRAINING_STEP)]
    return fixtures + steps


def count_lines(files: list[Path]) -> int:
    return sum(p.read_bytes().count(b"\n") for p in files)


def in_process(files: list[Path]) -> dict[str, float]:
    """loopcheck's library call on every file, and how many files passed the prefilter."""
    from loopcheck.api import _PREFILTER, lint_source

    sources = [p.read_bytes() for p in files]
    start = time.perf_counter()
    findings = sum(len(lint_source(src, str(p))) for p, src in zip(files, sources, strict=True))
    seconds = time.perf_counter() - start
    parsed = sum(1 for src in sources if _PREFILTER.search(src))
    return {"seconds": seconds, "parsed": parsed, "findings": findings}


def timed(command: list[str], env: dict[str, str] | None = None) -> tuple[float, bytes]:
    """Wall time and standard output of one run."""
    start = time.perf_counter()
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start, result.stdout


def loopcheck_command(files: list[Path], *options: str) -> list[str]:
    command = [sys.executable, "-m", "loopcheck", "check", "--exit-zero", "--format", "concise"]
    return [*command, *options, *map(str, files)]


def cli_runs(files: list[Path], jobs: int, repeat: int) -> dict[str, tuple[float, bytes]]:
    """Best-of-``repeat`` wall times of the three user-facing runs, each cold one with a cache
    directory of its own; the warm run reuses the last cold one's."""
    results: dict[str, tuple[float, bytes]] = {}
    with tempfile.TemporaryDirectory(prefix="loopcheck-bench-") as scratch:
        for name, jobs_option in (("cold, --jobs 1", 1), (f"cold, --jobs {jobs}", jobs)):
            best: tuple[float, bytes] | None = None
            for attempt in range(repeat):
                cache = Path(scratch) / f"{jobs_option}-{attempt}"
                env = {**os.environ, "LOOPCHECK_CACHE_DIR": str(cache)}
                run = timed(loopcheck_command(files, "--jobs", str(jobs_option)), env)
                best = run if best is None or run[0] < best[0] else best
            assert best is not None
            results[name] = best
        warm_env = {**os.environ, "LOOPCHECK_CACHE_DIR": str(cache)}
        warm = [
            timed(loopcheck_command(files, "--jobs", str(jobs)), warm_env) for _ in range(repeat)
        ]
        results["warm (cache)"] = min(warm, key=lambda run: run[0])
    return results


# Lints the files named on stdin with whatever loopcheck is first on the path; prints the
# CPU seconds (parsing and analysis only: reading the files is not timed).
_IN_PROCESS = """
import sys, time
from pathlib import Path
from loopcheck.api import lint_source
sources = [(p, Path(p).read_bytes()) for p in sys.stdin.read().split()]
start = time.process_time()
for path, source in sources:
    lint_source(source, path)
print(time.process_time() - start)
"""


def in_process_with(root: Path | None, files: list[Path]) -> float:
    """CPU seconds of linting ``files`` in a fresh interpreter importing loopcheck from
    ``root`` (None: this checkout)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root or REPO)
    result = subprocess.run(
        [sys.executable, "-c", _IN_PROCESS],
        input="\n".join(map(str, files)).encode(),
        stdout=subprocess.PIPE,
        env=env,
        check=True,
        cwd=tempfile.gettempdir(),
    )
    return float(result.stdout.decode().strip().splitlines()[-1])


def against(other: Path, files: list[Path], repeat: int) -> tuple[float, float]:
    """Best-of-``repeat`` CPU seconds of this checkout and of ``other`` on ``files``, run in
    turn so that both see the same machine load."""
    ours, theirs = [], []
    for _ in range(repeat):
        ours.append(in_process_with(None, files))
        theirs.append(in_process_with(other, files))
    return min(ours), min(theirs)


def rate(files: list[Path], lines: int, seconds: float) -> str:
    return f"{seconds:7.2f} s  {len(files) / seconds:8.0f} files/s  {lines / seconds:9.0f} lines/s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=None, help="directory to lint")
    parser.add_argument("--limit", type=int, default=None, help="lint only the first N files")
    parser.add_argument("--repeat", type=int, default=1, help="runs per measure (best is kept)")
    parser.add_argument("--jobs", type=int, default=None, help="all cores (default: usable cores)")
    parser.add_argument(
        "--against", type=Path, default=None, help="another loopcheck checkout to compare with"
    )
    parser.add_argument(
        "--heavy-only",
        action="store_true",
        help="only the training-heavy files (minutes, not a quarter of an hour, on a large tree)",
    )
    args = parser.parse_args()
    from loopcheck.runner import default_jobs

    jobs = args.jobs or default_jobs()
    tree = args.tree or default_tree()
    files = python_files(tree, args.limit)
    lines = count_lines(files)
    print(f"tree: {tree}  ({len(files)} files, {lines} lines); all cores = {jobs}")
    if args.heavy_only:
        heavy_runs(files, jobs, args)
        return

    stats = in_process(files)
    print(
        f"loopcheck (in process):     {rate(files, lines, stats['seconds'])}; "
        f"{stats['parsed']:.0f} of {len(files)} files passed the prefilter and were parsed; "
        f"{stats['findings']:.0f} findings"
    )

    runs = cli_runs(files, jobs, args.repeat)
    for name, (seconds, _) in runs.items():
        print(f"loopcheck (CLI, {name + '):':<16} {rate(files, lines, seconds)}")
    cold_one, cold_all, warm = (seconds for seconds, _ in runs.values())
    same = len({out for _, out in runs.values()}) == 1
    print(
        f"ratios: all cores is {cold_one / cold_all:.2f}x one job; warm is {cold_one / warm:.0f}x "
        f"cold with one job, {cold_all / warm:.0f}x cold with all cores; "
        f"outputs identical: {'yes' if same else 'NO'}"
    )

    heavy_runs(files, jobs, args)

    torchfix_ratio(files, lines, cold_one, args.repeat)


def heavy_runs(files: list[Path], jobs: int, args: argparse.Namespace) -> None:
    """The training-heavy files: cold through the CLI on one core and on all, warm, and in
    process beside ``--against``."""
    heavy = training_heavy(files)
    heavy_lines = count_lines(heavy)
    print(f"training-heavy: {len(heavy)} files (fixtures + the tree's files with a training step)")
    for name, (seconds, _) in cli_runs(heavy, jobs, args.repeat).items():
        print(f"  CLI, {name + ':':<16} {rate(heavy, heavy_lines, seconds)}")
    if args.against is not None:
        # the fixtures exercise every idiom the linter follows (an older version may skip
        # them); the tree's training files are code as people write it: both ratios count
        fixtures = [p for p in heavy if p.is_relative_to(FIXTURES)]
        tree = [p for p in heavy if not p.is_relative_to(FIXTURES)]
        for name, part in (("all", heavy), ("fixtures", fixtures), ("tree's", tree)):
            if not part:
                continue
            ours, theirs = against(args.against, part, args.repeat)
            print(
                f"  in process (CPU), {name} {len(part)} files: this checkout {ours:.2f} s, "
                f"{args.against} {theirs:.2f} s; ratio {ours / theirs:.2f}x"
            )


def torchfix_ratio(files: list[Path], lines: int, cold_one: float, repeat: int) -> None:
    if importlib.util.find_spec("torchfix") is None:
        print("TorchFix is not installed (pip install torchfix): no ratio")
        return
    theirs = [sys.executable, "-m", "torchfix", "--jobs", "1", *[str(p) for p in files]]
    best_theirs = min(timed(theirs)[0] for _ in range(repeat))
    print(f"TorchFix (CLI, 1 job):      {rate(files, lines, best_theirs)}")
    print(f"ratio: loopcheck (cold, --jobs 1) is {best_theirs / cold_one:.1f}x TorchFix's speed")


if __name__ == "__main__":
    main()
