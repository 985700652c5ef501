"""``loopcheck run script.py [args...]``: a user's unmodified script, everything watched.

The script runs in this process as ``__main__`` (``runpy``), with ``sys.argv`` set to the script
and its arguments, inside :func:`loopcheck.watch_all`: optimizers, LR schedulers and GradScalers
are watched from their construction, and the modules whose forward runs are the models (LC602).
The report goes to stderr at the end, or to the file ``--report`` names.

Exit status: 1 when there are findings; 3 when the script succeeded but no optimizer ever
stepped (nothing was checked); else the script's own.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
import traceback
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loopcheck.runtime.watcher import Watch

MODES = ("warn", "raise", "record")  # as loopcheck.runtime.core.MODES, without torch
EXIT_FINDINGS, EXIT_ERROR, EXIT_UNCHECKED = 1, 2, 3

USAGE = (
    "loopcheck run [--mode warn|raise|record] [--format text|json] [--max-steps N] "
    "[--report PATH] [--html PATH] script.py [args ...]"
)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    """The options of ``loopcheck run`` (everything after the script is the script's)."""
    parser = argparse.ArgumentParser(
        prog="loopcheck run",
        usage=USAGE,
        description="Run a training script with every optimizer, LR scheduler and GradScaler "
        "watched from its construction; report at the end.",
        epilog="Exit status: 1 findings, 3 no optimizer stepped (nothing checked), 2 usage "
        "error, else the script's own.",
    )
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="warn",
        help="warn as findings happen (default), raise at the first one, or only record them",
    )
    parser.add_argument(
        "--format", choices=("text", "json"), default="text", help="the report's format on stderr"
    )
    parser.add_argument(
        "--max-steps",
        type=_positive,
        metavar="N",
        help="stop the script when an optimizer has made N steps (at the start of the next "
        "iteration); the report is printed and the exit status is as usual",
    )
    parser.add_argument(
        "--report",
        metavar="PATH",
        help="write the report to PATH instead of stderr: JSON for .json, an HTML page for "
        ".html, else text",
    )
    parser.add_argument(
        "--html",
        metavar="PATH",
        help="also write the picture of the run (one self-contained HTML page) to PATH",
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


def report_format(path: str) -> str:
    """The report format a file name asks for, by its extension."""
    name = path.lower()
    if name.endswith(".json"):
        return "json"
    return "html" if name.endswith((".html", ".htm")) else "text"


def main(argv: list[str]) -> int:
    """Run ``script.py [args...]`` as given on the command line after ``loopcheck run``."""
    try:
        options = parser().parse_args(argv)
    except SystemExit as exc:  # --help, usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    script = options.script
    if not os.path.isfile(script):
        print(f"loopcheck run: no such file: {script}", file=sys.stderr)
        return EXIT_ERROR
    try:
        import torch  # noqa: F401
    except ImportError:
        print("loopcheck run needs PyTorch: pip install 'loopcheck[torch]'", file=sys.stderr)
        return EXIT_ERROR
    from loopcheck.runtime.watcher import StepLimitReached, Watch

    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = [script, *options.args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    code = 0
    watch = Watch(None, mode=options.mode, scope=True, max_steps=options.max_steps)
    try:
        with watch:
            try:
                runpy.run_path(script, run_name="__main__")
            except SystemExit as exc:
                code = _exit_code(exc.code)
            except KeyboardInterrupt:
                traceback.print_exc()
                code = 130
            except StepLimitReached:
                raise  # --max-steps: the watch ends the script as if it had finished
            except BaseException:  # the script's own error: show it as Python would
                traceback.print_exc()
                code = 1
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    sys.stderr.flush()
    _write_report(watch, options)
    if watch.findings:
        return EXIT_FINDINGS
    if code == 0 and not watch.checked:
        return EXIT_UNCHECKED
    return code


def _write(path: str, text: str) -> bool:
    try:
        with open(path, "w", encoding="utf-8") as out:
            out.write(text)
    except OSError as exc:
        print(f"loopcheck run: cannot write {path}: {exc}", file=sys.stderr)
        return False
    return True


def _write_report(watch: Watch, options: argparse.Namespace) -> None:
    if options.html is not None and _write(options.html, watch.report("html")):
        print(f"loopcheck run: picture written to {options.html}", file=sys.stderr)
    if options.report is not None:
        if _write(options.report, watch.report(report_format(options.report))):
            print(
                f"loopcheck run: report written to {options.report} "
                f"({len(watch.findings)} finding(s))",
                file=sys.stderr,
            )
            return
    print(watch.report(options.format), file=sys.stderr, end="")
