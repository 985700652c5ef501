"""Linting files with settings: the layer the CLI, the pytest plugin and pre-commit share.

:func:`loopcheck.api.lint_source` knows nothing of files or settings; this module reads the
files (Python files, and notebooks through :mod:`loopcheck.notebook`), runs the rules the
settings enable for each one, drops what per-file-ignores and ``# noqa`` silence, and turns
anything that goes wrong with one file into an LC900 finding for that file, so that the other
files are still linted.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from loopcheck.api import lint_source
from loopcheck.config import Config
from loopcheck.diagnostic import Diagnostic
from loopcheck.files import collect_files
from loopcheck.noqa import remove_silenced
from loopcheck.notebook import NotebookError, is_notebook, read_notebook
from loopcheck.rules import Rule

ERROR_CODE = "LC900"


@dataclass(frozen=True)
class FileReport:
    """One file's findings, and the bytes they were found in (None when it could not be read)."""

    path: str
    source: bytes | None
    diagnostics: tuple[Diagnostic, ...]


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


def check_source(source: bytes | str, path: str, config: Config) -> list[Diagnostic]:
    """Lint one file's contents as ``path``, with ``config``'s rules, per-file-ignores and noqa;
    a ``.ipynb`` path is read as a notebook."""
    codes = config.codes_for(path)
    if not codes:
        return []
    rules = config.rules_for(codes)
    try:
        if is_notebook(path):
            found = _lint_notebook(source, path, rules)
        else:
            found = _unsilenced(lint_source(source, path, rules), source)
    except Exception as exc:  # a bug of ours: report it for this file, keep linting the others
        found = [file_error(path, f"internal error: {type(exc).__name__}: {exc}")]
    return sorted(d for d in found if d.code in codes)


def _unsilenced(found: Iterable[Diagnostic], source: bytes | str) -> list[Diagnostic]:
    found = list(found)
    if not found:
        return found
    text = source if isinstance(source, str) else source.decode("utf-8-sig", errors="replace")
    return remove_silenced(found, text)


def _lint_notebook(
    source: bytes | str, path: str, rules: tuple[type[Rule], ...]
) -> list[Diagnostic]:
    """The code cells linted as one program, findings placed in their cells; a cell that does
    not compile is an LC900 finding of its own (the other cells are still linted)."""
    raw = source.encode("utf-8") if isinstance(source, str) else source
    try:
        notebook = read_notebook(raw)
    except NotebookError as exc:
        return [file_error(path, str(exc), exc.line, exc.column)]
    if notebook is None:  # a notebook in another language
        return []
    program = lint_source(notebook.program, path, rules)
    found = [notebook.locate(d) for d in _unsilenced(program, notebook.program)]
    for cell in notebook.broken_cells:
        errors = _unsilenced(lint_source(cell.text, path, rules), cell.text)
        found += [replace(d, cell=cell.number) for d in errors]
    return found


def check_file(path: str | os.PathLike[str], config: Config) -> FileReport:
    """Read and lint one file; a file that cannot be read is an LC900 finding, not an error."""
    name = os.fspath(path)
    try:
        source = Path(name).read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        found = [file_error(name, f"cannot read file: {reason}")]
        return FileReport(name, None, _enabled(found, name, config))
    return FileReport(name, source, tuple(check_source(source, name, config)))


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
    paths: Iterable[str | os.PathLike[str]], config: Config, *, force_exclude: bool = False
) -> list[FileReport]:
    """Lint every file under ``paths`` (see :func:`loopcheck.files.collect_files`); a directory
    that cannot be listed is an LC900 finding. Raises :class:`MissingPathsError`, before
    linting anything, when one of ``paths`` does not exist."""
    collected = collect_files(paths, config.exclude, config.root, force_exclude=force_exclude)
    if collected.missing:
        raise MissingPathsError(collected.missing)
    reports = [check_file(path, config) for path in collected.files]
    for directory, reason in collected.unreadable:
        found = [file_error(directory, f"cannot read directory: {reason}")]
        reports.append(FileReport(directory, None, _enabled(found, directory, config)))
    return reports


def lint_paths(
    paths: Iterable[str | os.PathLike[str]], config: Config, *, force_exclude: bool = False
) -> list[Diagnostic]:
    """The findings in every file under ``paths``, sorted by path, line and column."""
    reports = check_paths(paths, config, force_exclude=force_exclude)
    return sorted(d for report in reports for d in report.diagnostics)
