"""``loopcheck run script.py [args...]``: a user's unmodified script, every optimizer watched.

The script runs in this process as ``__main__`` (``runpy``), with ``sys.argv`` set to the script
and its arguments. Optimizers are found as they step (the global step pre-hook): the first step
of each is where its watch begins; its LR schedulers and GradScaler are found then too. No
model is known: any module's forward after a step begins an iteration (a global forward
pre-hook), and orphan parameters (LC602) are not seen. The report goes to stderr at the end.
Exit code: 1 when there are findings, else the script's own.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
import traceback

MODES = ("warn", "raise", "record")  # as loopcheck.runtime.watcher.MODES, without torch

USAGE = "loopcheck run [--mode warn|raise|record] [--format text|json] script.py [args ...]"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loopcheck run",
        usage=USAGE,
        description="Run a training script with every optimizer watched; report at the end.",
    )
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="warn",
        help="warn as findings happen (default), raise at the first one, or only record them",
    )
    parser.add_argument(
        "--format", choices=("text", "json"), default="text", help="the report's format"
    )
    parser.add_argument("script", help="the Python script to run")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the script's own arguments")
    return parser


def _exit_code(code: object) -> int:
    """What the interpreter would exit with for ``sys.exit(code)``."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def main(argv: list[str]) -> int:
    """Run ``script.py [args...]`` as given on the command line after ``loopcheck run``."""
    options = _parser().parse_args(argv)
    script = options.script
    if not os.path.isfile(script):
        print(f"loopcheck run: no such file: {script}", file=sys.stderr)
        return 2
    try:
        import torch  # noqa: F401
    except ImportError:
        print("loopcheck run needs PyTorch: pip install 'loopcheck[torch]'", file=sys.stderr)
        return 2
    from loopcheck.runtime.watcher import Watch

    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = [script, *options.args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    code = 0
    watch = Watch(None, mode=options.mode, discover=True)
    try:
        with watch:
            try:
                runpy.run_path(script, run_name="__main__")
            except SystemExit as exc:
                code = _exit_code(exc.code)
            except KeyboardInterrupt:
                traceback.print_exc()
                code = 130
            except BaseException:  # the script's own error: show it as Python would
                traceback.print_exc()
                code = 1
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    sys.stderr.flush()
    print(watch.report(options.format), file=sys.stderr, end="")
    return 1 if watch.findings else code
