"""Linting files with settings: the layer the CLI, the pytest plugin and pre-commit share.

:func:`loopcheck.api.lint_source` knows nothing of files or settings; this module reads the
files (Python files, and notebooks through :mod:`loopcheck.notebook`), runs the rules the
settings enable for each one, drops what per-file-ignores and ``# noqa`` silence, and turns
anything that goes wrong with one file into an LC900 finding for that file, so that the other
files are still linted. :func:`check_paths` can answer from a :class:`~loopcheck.cache.LintCache`
and spread the files over worker processes; the output is the same either way.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from loopcheck.cache import LintCache, content_hash
from loopcheck.config import Config
from loopcheck.diagnostic import Diagnostic
from loopcheck.files import LintedFiles, collect_files
from loopcheck.noqa import remove_silenced
from loopcheck.notebook import NotebookError, is_notebook, read_notebook
from loopcheck.rules import Rule

ERROR_CODE = "LC900"
# A worker process costs tens of milliseconds to start: fewer files than this each are linted
# in this process.
FILES_PER_WORKER = 4


@dataclass(frozen=True)
class FileReport:
    """One file's findings, and the bytes they were found in (None when it could not be read)."""

    path: str
    source: bytes | None
    diagnostics: tuple[Diagnostic, ...]


@dataclass(frozen=True)
class FileLint:
    """What linting one file gives: its findings, and the other linted files its analysis read
    (whose changes make the findings stale)."""

    diagnostics: tuple[Diagnostic, ...]
    dependencies: frozenset[str] = frozenset()


def lint_source(
    source: str | bytes, path: str, rules: tuple[type[Rule], ...], project: Any = None
) -> list[Diagnostic]:
    """:func:`loopcheck.api.lint_source`, imported on first use: a run the cache answers
    never pays for importing libcst."""
    from loopcheck.api import lint_source as lint

    return lint(source, path, rules, project)


def file_error(path: str, message: str, line: int = 1, column: int = 1) -> Diagnostic:
    """An LC900 finding for a whole file (it could not be read, or linting it failed)."""
    return Diagnostic(
        path=path,
        line=line,
        column=column,
        code=ERROR_CODE,
        name="parse-error",
        message=message,
        end_line=line,
        end_column=column,
    )


def analyse(
    source: str | bytes, path: str, rules: tuple[type[Rule], ...], linted: LintedFiles
) -> FileLint:
    """The static analysis of one program, in a run that lints ``linted``: calls into the other
    files of ``linted`` are followed, the files read are reported (the cache keeps the
    findings only while they are unchanged), and a finding may lie in one of them."""
    if len(linted.paths) < 2:
        return FileLint(tuple(lint_source(source, path, rules)))
    project = _project(linted)
    project.begin(path)
    found = lint_source(source, path, rules, project)
    return FileLint(tuple(found), frozenset(project.reads))


_PROJECT: tuple[LintedFiles, Any] | None = None


def _project(linted: LintedFiles) -> Any:
    """One index of the linted files per process and run: each file is parsed once."""
    global _PROJECT
    if _PROJECT is None or not (_PROJECT[0] is linted or _PROJECT[0] == linted):
        from loopcheck.static import Project

        _PROJECT = (linted, Project(linted.paths))
    return _PROJECT[1]


def lint_file_source(
    source: bytes | str,
    path: str,
    config: Config,
    linted: LintedFiles | None = None,
    fixes: bool = False,
) -> FileLint:
    """Lint one file's contents as ``path`` with ``config``'s rules, per-file-ignores and noqa;
    a ``.ipynb`` path is read as a notebook. With ``fixes``, each of the file's own findings
    that a fixer can fix for certain carries that fix (see :mod:`loopcheck.fix.engine`)."""
    codes = config.codes_for(path)
    if not codes:
        return FileLint(())
    rules = config.rules_for(codes)
    linted = linted or LintedFiles((path,))
    # A fix is judged by what every rule finds in the file linted alone: when this lint is
    # that lint, its findings before noqa spare the judge linting the text again.
    alone: tuple[Diagnostic, ...] | None = None
    try:
        if is_notebook(path):
            lint = _lint_notebook(source, path, rules, linted)
        else:
            if fixes and len(linted.paths) < 2:
                lint = analyse(source, path, config.rules, linted)
                alone = lint.diagnostics
            else:
                lint = analyse(source, path, rules, linted)
            own = [d for d in lint.diagnostics if d.path == path]
            foreign = [d for d in lint.diagnostics if d.path != path]
            lint = replace(lint, diagnostics=(*_unsilenced(own, source), *foreign))
    except Exception as exc:  # a bug of ours: report it for this file, keep linting the others
        lint = FileLint((file_error(path, f"internal error: {type(exc).__name__}: {exc}"),))
    # Findings in other linted files (a helper misbehaving in this file's loop) are kept as
    # they are: their own file's settings and noqa comments judge them (see ``check_paths``).
    found = sorted(d for d in lint.diagnostics if d.path != path or d.code in codes)
    if fixes:
        found = _with_fixes(found, source, path, config, alone)
    return FileLint(tuple(found), lint.dependencies - {path})


def _with_fixes(
    found: list[Diagnostic],
    source: bytes | str,
    path: str,
    config: Config,
    alone: Sequence[Diagnostic] | None = None,
) -> list[Diagnostic]:
    """``found`` with the checked fix attached to each of ``path``'s own fixable findings
    (``alone``: every rule's findings in the file linted alone, if at hand)."""
    from loopcheck.fix.engine import attach_fixes, python_text

    text = python_text(source, path, found)
    if text is None:
        return found
    try:
        return sorted(attach_fixes(found, text, path, config.rules, alone))
    except Exception:  # a bug of ours in a fixer: the findings stand, without fixes
        return found


def check_source(source: bytes | str, path: str, config: Config) -> list[Diagnostic]:
    """Lint one file's contents as ``path``, with ``config``'s rules, per-file-ignores and noqa."""
    return list(lint_file_source(source, path, config).diagnostics)


def _unsilenced(found: Iterable[Diagnostic], source: bytes | str) -> tuple[Diagnostic, ...]:
    found = tuple(found)
    if not found:
        return found
    text = source if isinstance(source, str) else source.decode("utf-8-sig", errors="replace")
    return tuple(remove_silenced(found, text))


def _lint_notebook(
    source: bytes | str, path: str, rules: tuple[type[Rule], ...], linted: LintedFiles
) -> FileLint:
    """The code cells linted as one program, findings placed in their cells; a cell that does
    not compile is an LC900 finding of its own (the other cells are still linted)."""
    raw = source.encode("utf-8") if isinstance(source, str) else source
    try:
        notebook = read_notebook(raw)
    except NotebookError as exc:
        return FileLint((file_error(path, str(exc), exc.line, exc.column),))
    if notebook is None:  # a notebook in another language
        return FileLint(())
    lint = analyse(notebook.program, path, rules, linted)
    own = [d for d in lint.diagnostics if d.path == path]
    found = [notebook.locate(d) for d in _unsilenced(own, notebook.program)]
    found += [d for d in lint.diagnostics if d.path != path]
    for cell in notebook.broken_cells:
        errors = _unsilenced(lint_source(cell.text, path, rules), cell.text)
        found += [replace(d, cell=cell.number) for d in errors]
    return FileLint(tuple(found), lint.dependencies)


def check_file(path: str | os.PathLike[str], config: Config) -> FileReport:
    """Read and lint one file; a file that cannot be read is an LC900 finding, not an error."""
    name = os.fspath(path)
    source = _read(name, config)
    if isinstance(source, FileReport):
        return source
    return FileReport(name, source, tuple(check_source(source, name, config)))


def _read(path: str, config: Config) -> bytes | FileReport:
    """The file's bytes, or the report of a file that cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        found = [file_error(path, f"cannot read file: {reason}")]
        return FileReport(path, None, _enabled(found, path, config))


def _enabled(found: list[Diagnostic], path: str, config: Config) -> tuple[Diagnostic, ...]:
    codes = config.codes_for(path)
    return tuple(d for d in found if d.code in codes)


def lint_file(path: Path, config: Config) -> list[Diagnostic]:
    """The findings in one file, as settings and ``# noqa`` comments leave them."""
    return list(check_file(path, config).diagnostics)


class MissingPathsError(FileNotFoundError):
    """Some of the paths to lint do not exist (nothing was linted)."""

    def __init__(self, paths: list[str]) -> None:
        super().__init__(f"no such file or directory: {', '.join(paths)}")
        self.paths = paths


def check_paths(
    paths: Iterable[str | os.PathLike[str]],
    config: Config,
    *,
    force_exclude: bool = False,
    jobs: int = 1,
    cache: LintCache | None = None,
    fixes: bool = False,
) -> list[FileReport]:
    """Lint every file under ``paths`` (see :func:`loopcheck.files.collect_files`), in that
    order; a directory that cannot be listed is an LC900 finding. Raises
    :class:`MissingPathsError`, before linting anything, when one of ``paths`` does not exist.

    Files whose findings ``cache`` holds are not linted again; the others are linted in up to
    ``jobs`` worker processes (none for a handful of files), and stored in ``cache``. With
    ``fixes``, findings carry their checked fixes (computed there too, and cached).
    """
    collected = collect_files(paths, config.exclude, config.root, force_exclude=force_exclude)
    if collected.missing:
        raise MissingPathsError(collected.missing)
    linted = LintedFiles(tuple(collected.files))
    reports: dict[str, FileReport] = {}
    sources: dict[str, bytes] = {}
    for path in collected.files:
        source = _read(path, config)
        if isinstance(source, FileReport):
            reports[path] = source
        else:
            sources[path] = source
    hashes = {path: content_hash(source) for path, source in sources.items()} if cache else {}
    settings: dict[str, str] = {}
    todo = []
    for path, source in sources.items():
        if cache is not None:
            settings[path] = _settings_key(config, path, fixes)
            hit = cache.lookup(path, settings[path], hashes[path], hashes.get)
            if hit is not None:
                reports[path] = FileReport(path, source, hit)
                continue
        todo.append(path)
    linting = _lint_all(todo, sources, config, linted, jobs, fixes)
    for path, lint in zip(todo, linting, strict=True):
        reports[path] = FileReport(path, sources[path], lint.diagnostics)
        if cache is not None:
            states = {dep: hashes.get(dep) for dep in sorted(lint.dependencies)}
            cache.store(path, settings[path], hashes[path], lint.diagnostics, states)
    ordered = _place_findings([reports[path] for path in collected.files], sources, config, fixes)
    for directory, reason in collected.unreadable:
        found = [file_error(directory, f"cannot read directory: {reason}")]
        ordered.append(FileReport(directory, None, _enabled(found, directory, config)))
    return ordered


def _place_findings(
    reports: list[FileReport], sources: dict[str, bytes], config: Config, fixes: bool
) -> list[FileReport]:
    """Move each finding into the report of the file it lies in (the analysis of one file may
    find a bug in a helper of another), judged by that file's settings and noqa comments, once
    however many files exposed it."""
    moved: dict[str, set[Diagnostic]] = {}
    kept: list[FileReport] = []
    for report in reports:
        own = tuple(d for d in report.diagnostics if d.path == report.path)
        for d in report.diagnostics:
            if d.path != report.path:
                moved.setdefault(d.path, set()).add(d)
        kept.append(
            replace(report, diagnostics=own) if len(own) < len(report.diagnostics) else report
        )
    if not moved:
        return reports
    out = []
    for report in kept:
        extra = moved.get(report.path)
        if extra and report.path in sources:
            codes = config.codes_for(report.path)
            judged = _unsilenced((d for d in extra if d.code in codes), sources[report.path])
            if fixes:
                judged = tuple(_with_fixes(list(judged), sources[report.path], report.path, config))
            merged = sorted(set(report.diagnostics) | set(judged))
            report = replace(report, diagnostics=tuple(merged))
        out.append(report)
    return out


def _settings_key(config: Config, path: str, fixes: bool = False) -> str:
    """What, besides the file, decides its findings: the rules that run on it (and those that
    judge its fixes, when findings carry them)."""
    codes = config.codes_for(path)
    key: list[object] = [sorted(codes), _names(config.rules_for(codes))]
    if fixes:
        key += ["fixes", _names(config.rules)]
    return json.dumps(key)


def _names(rules: Iterable[type[Rule]]) -> list[str]:
    return [f"{rule.__module__}.{rule.__qualname__}" for rule in rules]


def lint_paths(
    paths: Iterable[str | os.PathLike[str]], config: Config, *, force_exclude: bool = False
) -> list[Diagnostic]:
    """The findings in every file under ``paths``, sorted by path, line and column."""
    reports = check_paths(paths, config, force_exclude=force_exclude)
    return sorted(d for report in reports for d in report.diagnostics)


# -- worker processes -----------------------------------------------------------------------------


def default_jobs() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _lint_all(
    todo: list[str],
    sources: dict[str, bytes],
    config: Config,
    linted: LintedFiles,
    jobs: int,
    fixes: bool = False,
) -> Iterator[FileLint]:
    """Each file's lint, in ``todo``'s order, in this process or in ``jobs`` workers."""
    workers = min(jobs, len(todo) // FILES_PER_WORKER)
    if workers < 2:
        for path in todo:
            yield lint_file_source(sources[path], path, config, linted, fixes)
        return
    # Files differ a lot in cost: hand them out one at a time, largest first, so that no big
    # file is left to run alone at the end; the results come back in ``todo``'s order.
    order = sorted(range(len(todo)), key=lambda i: -len(sources[todo[i]]))
    results: dict[int, FileLint] = {}
    with ProcessPoolExecutor(
        workers,
        mp_context=_pool_context(),
        initializer=_start_worker,
        initargs=(config, linted, fixes),
    ) as pool:
        items = ((todo[i], sources[todo[i]]) for i in order)
        for i, lint in zip(order, pool.map(_lint_in_worker, items), strict=True):
            results[i] = lint
    yield from (results[i] for i in range(len(todo)))


def _pool_context() -> multiprocessing.context.BaseContext:
    """Forked workers start at once with everything imported, but forking a process that runs
    other threads (native ones included: torch's, in a test session) can deadlock the child, so
    on Linux: fork when this process has one thread, else fork from a clean server process;
    elsewhere the platform's default."""
    if sys.platform != "linux":
        return multiprocessing.get_context()
    return multiprocessing.get_context("fork" if _single_threaded() else "forkserver")


def _single_threaded() -> bool:
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return threading.active_count() == 1


_worker_settings: tuple[Config, LintedFiles, bool] | None = None


def _start_worker(config: Config, linted: LintedFiles, fixes: bool) -> None:
    global _worker_settings
    _worker_settings = (config, linted, fixes)


def _lint_in_worker(item: tuple[str, bytes]) -> FileLint:
    assert _worker_settings is not None, "the pool's initializer sets the settings"
    config, linted, fixes = _worker_settings
    path, source = item
    return lint_file_source(source, path, config, linted, fixes)
