"""The ``loopcheck`` command: ``check`` (the default), ``rule`` and ``rules``.

``loopcheck train.py src/`` is ``loopcheck check train.py src/``; a first argument that names
no command is a path, and ``loopcheck check rules`` lints a file named ``rules``. Exit status:
0 clean, 1 findings, 2 usage, settings or internal error. Importing this module must stay cheap
and must not import torch: the linter runs in pre-commit environments without it.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from loopcheck import __version__
from loopcheck.cache import CACHE_DIR_ENV, LintCache, cache_directory
from loopcheck.config import Config, ConfigError, Selection, load_config, parse_selectors
from loopcheck.diagnostic import Diagnostic
from loopcheck.files import is_excluded
from loopcheck.fix.engine import fix_report, with_fixes
from loopcheck.output import (
    FORMATS,
    HUMAN_FORMATS,
    format_rule,
    format_rules,
    format_statistics,
    format_statistics_json,
    render,
    summary,
)
from loopcheck.rules import ALL_RULES, get_rule
from loopcheck.runner import (
    FileReport,
    MissingPathsError,
    check_paths,
    check_source,
    default_jobs,
)

EXIT_CLEAN, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2
STDIN = "-"

Handler = Callable[[argparse.Namespace], int]


# -- check ----------------------------------------------------------------------------------------


def add_check_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "check",
        help="lint files and directories (the default command)",
        description="Lint Python files and Jupyter notebooks for training-loop bugs. "
        "Directories are searched for *.py and *.ipynb files; '-' reads standard input.",
    )
    parser.add_argument(
        "paths", nargs="*", metavar="PATH", help="files or directories (default: .)"
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="text",
        help="text (with the offending line), concise (one line each), json (ruff's fields), "
        "github (workflow annotations) or sarif (2.1.0)",
    )
    for flag, what in (
        ("--select", "run only these rules"),
        ("--extend-select", "run these rules too"),
        ("--ignore", "do not run these rules"),
    ):
        parser.add_argument(
            flag,
            action="append",
            default=[],
            metavar="CODES",
            help=f"{what}: comma-separated codes or prefixes (LC102, LC1, ALL)",
        )
    parser.add_argument("--config", type=Path, metavar="FILE", help="read [tool.loopcheck] here")
    parser.add_argument("--stdin-filename", metavar="NAME", help="the name of the file read from -")
    parser.add_argument(
        "--force-exclude",
        action="store_true",
        help="apply exclude and skipped directories to paths named explicitly too (pre-commit)",
    )
    parser.add_argument("--exit-zero", action="store_true", help="exit 0 even with findings")
    parser.add_argument(
        "--statistics", action="store_true", help="print a count per rule instead of each finding"
    )
    parser.add_argument(
        "--fix",
        action="store_true",
        help="apply the fixes that are certain (findings marked [*]) and write the files, then "
        "report what remains; with '-', print the fixed source on stdout and the report on stderr",
    )
    parser.add_argument(
        "--diff",
        action="store_true",
        help="print those fixes as a unified diff and write nothing; exit 1 when there is "
        "something to fix, 0 otherwise",
    )
    parser.add_argument(
        "--jobs",
        "-j",
        type=_positive_int,
        default=None,
        metavar="N",
        help="lint in N processes (default: one per core; the output does not depend on it)",
    )
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="lint every file again, ignoring and not updating the cache "
        f"(.loopcheck_cache at the project root, or ${CACHE_DIR_ENV})",
    )
    parser.set_defaults(handler=run_check)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of processes, got {text!r}")
    return value


def run_check(args: argparse.Namespace) -> int:
    config = _settings(args)
    paths = args.paths or ["."]
    cache = None if args.no_cache else LintCache(cache_directory(config.root))
    try:
        reports = check_paths(
            [path for path in paths if path != STDIN],
            config,
            force_exclude=args.force_exclude,
            jobs=args.jobs or default_jobs(),
            cache=cache,
            # the report marks fixable findings: their fixes are checked where files are
            # linted, in parallel, and cached with the findings (--fix and --diff redo them)
            fixes=not (args.fix or args.diff),
        )
    except MissingPathsError as exc:
        for path in exc.paths:
            _error(f"{path}: no such file or directory")
        return EXIT_ERROR
    if cache is not None and cache.problem is not None:
        _warn(f"{cache.problem} (linting went on without it)")
    stdin_report = _check_stdin(args, config) if STDIN in paths else None
    if stdin_report is not None:
        reports.append(stdin_report)
    if not reports:
        _warn("no Python files found under the given paths")
    if args.fix or args.diff:
        return _fix(args, config, reports, stdin_report)
    if stdin_report is not None:
        reports[-1] = with_fixes(stdin_report, config)
    diagnostics = sorted(d for report in reports for d in report.diagnostics)
    sources = {report.path: report.source for report in reports if report.diagnostics}
    _write(sys.stdout, _report(args, diagnostics, sources))
    return EXIT_FINDINGS if diagnostics and not args.exit_zero else EXIT_CLEAN


def _settings(args: argparse.Namespace) -> Config:
    """The config table's settings with the command line's selection layered on top."""
    config = load_config(args.config)
    if args.select or args.extend_select or args.ignore:
        selection = Selection(
            select=parse_selectors(args.select) if args.select else None,
            extend_select=parse_selectors(args.extend_select),
            ignore=parse_selectors(args.ignore),
        )
        try:
            config = config.with_selection(selection)
        except ConfigError as exc:
            raise ConfigError(f"command line: {exc}") from None
    return config


def _check_stdin(args: argparse.Namespace, config: Config) -> FileReport | None:
    name = args.stdin_filename or STDIN
    if args.force_exclude and is_excluded(name, config.exclude, config.root):
        return None
    source = sys.stdin.buffer.read() if sys.stdin is not None else b""
    return FileReport(name, source, tuple(check_source(source, name, config)))


def _fix(
    args: argparse.Namespace,
    config: Config,
    reports: list[FileReport],
    stdin_report: FileReport | None,
) -> int:
    """``--fix`` and ``--diff``: fix every file with something to fix, then write the files
    (or print the diff, or the fixed standard input) and report what remains."""
    remaining: list[FileReport] = []
    diffs: list[str] = []
    fixed = 0
    failed = False
    stdin_out = b""
    for report in reports:
        result = fix_report(report, config)
        final = report if result is None else result.report
        remaining.append(final)
        if report is stdin_report:
            stdin_out = final.source or b""
        if result is None:
            continue
        fixed += result.fixed
        if args.diff:
            diffs.append(result.diff())
        elif result.fixed and report is not stdin_report and result.report.source is not None:
            try:
                Path(report.path).write_bytes(result.report.source)
            except OSError as exc:
                _error(f"{report.path}: cannot write the fixed file: {exc.strerror or exc}")
                failed = True
    if args.diff:
        _write(sys.stdout, "".join(diffs))
        s = "" if fixed == 1 else "s"
        _write(
            sys.stderr, f"Would fix {fixed} error{s}.\n" if fixed else "No errors would be fixed.\n"
        )
        return EXIT_FINDINGS if fixed and not args.exit_zero else EXIT_CLEAN
    diagnostics = sorted(d for report in remaining for d in report.diagnostics)
    sources = {report.path: report.source for report in remaining if report.diagnostics}
    out = sys.stdout
    if stdin_report is not None:  # the fixed source goes to stdout, as ruff does
        _write_bytes(sys.stdout, stdin_out)
        out = sys.stderr
    _write(out, _report(args, diagnostics, sources, fixed=fixed))
    if failed:
        return EXIT_ERROR
    return EXIT_FINDINGS if diagnostics and not args.exit_zero else EXIT_CLEAN


def _report(
    args: argparse.Namespace,
    diagnostics: list[Diagnostic],
    sources: dict[str, bytes | None],
    fixed: int | None = None,
) -> str:
    """The findings (or their statistics) in the chosen format, then the summary line for
    people (ruff prints it on stdout too); ``fixed`` counts what ``--fix`` fixed."""
    if args.statistics and args.format == "json":
        return format_statistics_json(diagnostics)
    if args.statistics:
        out = format_statistics(diagnostics)
    else:
        out = render(diagnostics, args.format, sources=sources, rules=ALL_RULES)
    if args.format not in HUMAN_FORMATS:
        return out
    gap = "\n" if args.format == "text" and diagnostics and not args.statistics else ""
    return out + gap + summary(diagnostics, fixed)


# -- rule, rules ----------------------------------------------------------------------------------


def add_rule_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "rule", help="explain a rule", description="Print a rule's documentation."
    )
    parser.add_argument("rule", metavar="CODE_OR_NAME", help="LC102 or zero-grad-after-backward")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.set_defaults(handler=run_rule)


def run_rule(args: argparse.Namespace) -> int:
    rule = get_rule(args.rule)
    if rule is None:
        _error(f"unknown rule: {args.rule!r} (see 'loopcheck rules')")
        return EXIT_ERROR
    _write(sys.stdout, format_rule(rule, args.format))
    return EXIT_CLEAN


def add_rules_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "rules", help="list every rule", description="List every rule: code, name, summary."
    )
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.set_defaults(handler=run_rules)


def run_rules(args: argparse.Namespace) -> int:
    _write(sys.stdout, format_rules(ALL_RULES, args.format))
    return EXIT_CLEAN


# -- run ----------------------------------------------------------------------------------------


def add_run_command(commands: argparse._SubParsersAction) -> None:
    # Listed for --help only: ``main`` hands ``run`` and everything after it to the runtime,
    # whose own parser knows the script's arguments from its own.
    from loopcheck.runtime.run import USAGE  # no torch: the runtime imports it when run

    commands.add_parser(
        "run",
        help="run a training script with every optimizer watched from construction (needs "
        "torch); 'loopcheck run --help' for its options",
        description=USAGE,
        add_help=False,
    )


# -- the command line -----------------------------------------------------------------------------

# name → function adding its subparser (which sets ``handler``); a new command goes here.
COMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {
    "check": add_check_command,
    "rule": add_rule_command,
    "rules": add_rules_command,
    "run": add_run_command,
}
DEFAULT_COMMAND = "check"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loopcheck",
        description="Finds the PyTorch training-loop bugs that never raise an error.",
        epilog="'loopcheck PATH...' is short for 'loopcheck check PATH...'.",
    )
    parser.add_argument("--version", action="version", version=f"loopcheck {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add_command in COMMANDS.values():
        add_command(commands)
    return parser


def with_default_command(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``check`` in front unless it starts with a command or a top-level flag."""
    if argv and (argv[0] in COMMANDS or argv[0] in ("-h", "--help", "--version")):
        return list(argv)
    return [DEFAULT_COMMAND, *argv]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (the console script exits with it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "run":
        from loopcheck.runtime.run import main as run_script  # imports torch only when run

        return run_script(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(with_default_command(argv))
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    handler: Handler = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        _error(str(exc))
        return EXIT_ERROR
    except BrokenPipeError:  # the reader left early (``loopcheck . | head``): no trace for that
        _detach_stdout()
        return EXIT_ERROR
    except Exception as exc:  # a bug of ours: say so plainly, with the trace to report it
        _error(f"internal error: {type(exc).__name__}: {exc}")
        traceback.print_exc(file=sys.stderr)
        return EXIT_ERROR


def _detach_stdout() -> None:
    """Point stdout at /dev/null so that Python's flush at exit does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (captured output)
        pass


def _write(stream: TextIO, text: str) -> None:
    """Write, escaping what the stream's encoding cannot show (source lines can hold anything)."""
    try:
        stream.write(text)
    except UnicodeEncodeError:
        encoding = stream.encoding or "utf-8"
        stream.write(text.encode(encoding, "backslashreplace").decode(encoding))
    stream.flush()


def _write_bytes(stream: TextIO, data: bytes) -> None:
    """Write bytes as they are when the stream has a binary side (source code keeps its
    encoding and line endings), else as text."""
    binary = getattr(stream, "buffer", None)
    if binary is None:
        _write(stream, data.decode("utf-8", errors="replace"))
        return
    stream.flush()
    binary.write(data)
    binary.flush()


def _error(message: str) -> None:
    _write(sys.stderr, f"loopcheck: error: {message}\n")


def _warn(message: str) -> None:
    _write(sys.stderr, f"loopcheck: warning: {message}\n")
