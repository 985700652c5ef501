"""Which files to lint: walking the given paths, skipped directories and glob patterns."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path, PurePosixPath

# Directories that never hold the user's own training code (ruff's default excludes, plus caches).
SKIPPED_DIRS = frozenset(
    {
        ".bzr",
        ".direnv",
        ".eggs",
        ".git",
        ".git-rewrite",
        ".hg",
        ".ipynb_checkpoints",
        ".loopcheck_cache",
        ".mypy_cache",
        ".nox",
        ".pants.d",
        ".pyenv",
        ".pytest_cache",
        ".pytype",
        ".ruff_cache",
        ".svn",
        ".tox",
        ".venv",
        ".vscode",
        "__pycache__",
        "__pypackages__",
        "_build",
        "buck-out",
        "build",
        "dist",
        "node_modules",
        "site-packages",
        "venv",
    }
)

# What a directory search picks up: Python files and Jupyter notebooks (as ruff does).
LINTED_SUFFIXES = (".py", ".ipynb")


@lru_cache(maxsize=256)
def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Compile a glob: ``*`` and ``?`` stay within one path segment, ``**`` crosses segments
    (``**/`` also matches no directory at all), ``[...]`` is a character class."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and (close := _class_end(pattern, i)) != -1:
            body = pattern[i + 1 : close]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = close + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out), re.DOTALL)


def _class_end(pattern: str, start: int) -> int:
    """Index of the ``]`` closing the character class opened at ``start``, or -1."""
    first = start + 1
    if pattern.startswith("!", first):
        first += 1
    return pattern.find("]", first + 1)


def path_matches(path: str | os.PathLike[str], pattern: str, root: Path) -> bool:
    """Whether ``pattern`` matches the file or one of its parent directories.

    A pattern without ``/`` (``build``, ``test_*.py``) matches a file or directory of that name
    anywhere below ``root``; a pattern with ``/`` (``src/legacy/*.py``) is anchored at ``root``,
    or at ``/`` when it is absolute.
    """
    absolute = PurePosixPath(Path(os.path.abspath(path)).as_posix())
    pattern = pattern.rstrip("/")
    if pattern.startswith("/"):
        parts = absolute.parts[1:]
        pattern = pattern.lstrip("/")
    else:
        parts = _relative_parts(absolute, root)
        pattern = pattern.removeprefix("./")
    if not pattern:
        return False
    regex = glob_to_regex(pattern)
    if "/" not in pattern:
        return any(regex.fullmatch(part) for part in parts)
    return any(regex.fullmatch("/".join(parts[:end])) for end in range(1, len(parts) + 1))


def _relative_parts(absolute: PurePosixPath, root: Path) -> tuple[str, ...]:
    """The path's parts below ``root``; only its name when it lies outside ``root``."""
    try:
        return absolute.relative_to(Path(os.path.abspath(root)).as_posix()).parts
    except ValueError:
        return (absolute.name,)


def matches_any(path: str | os.PathLike[str], patterns: Iterable[str], root: Path) -> bool:
    return any(path_matches(path, pattern, root) for pattern in patterns)


def is_virtualenv(directory: str | os.PathLike[str]) -> bool:
    return os.path.isfile(os.path.join(directory, "pyvenv.cfg"))


def _is_skipped_dir(directory: str, exclude: Iterable[str], root: Path) -> bool:
    return (
        os.path.basename(directory) in SKIPPED_DIRS
        or is_virtualenv(directory)
        or matches_any(directory, exclude, root)
    )


def _walk(
    directory: str, exclude: tuple[str, ...], root: Path, unreadable: list[tuple[str, str]]
) -> Iterator[str]:
    """The Python files and notebooks below ``directory``, in sorted order, pruning skipped
    directories.

    Symbolic links to directories are not followed (no cycles); links to files are listed, and
    a broken one is reported by the reader, not here. Directories that cannot be listed are
    appended to ``unreadable``.
    """

    def on_error(error: OSError) -> None:
        unreadable.append((os.path.normpath(error.filename or directory), error.strerror or ""))

    for current, dirnames, filenames in os.walk(directory, onerror=on_error):
        dirnames[:] = sorted(
            name
            for name in dirnames
            if not _is_skipped_dir(os.path.join(current, name), exclude, root)
        )
        for name in sorted(filenames):
            file = os.path.join(current, name)
            if name.endswith(LINTED_SUFFIXES) and not matches_any(file, exclude, root):
                yield os.path.normpath(file)


@dataclass
class Collected:
    """What :func:`collect_files` found."""

    files: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # given paths that do not exist
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (directory, reason)


def collect_files(
    paths: Iterable[str | os.PathLike[str]],
    exclude: Iterable[str] = (),
    root: Path | None = None,
    *,
    force_exclude: bool = False,
) -> Collected:
    """The files to lint under ``paths``, in a stable order without duplicates.

    Directories are searched for ``*.py`` and ``*.ipynb`` files, skipping virtual environments,
    VCS and build directories and ``exclude`` patterns (relative to ``root``, the current
    directory by default).
    A file named explicitly is always linted, whatever its suffix, unless ``force_exclude``
    applies the skipped directories and patterns to it too.
    """
    root = Path(os.path.abspath(root if root is not None else Path.cwd()))
    exclude = tuple(exclude)
    found = Collected()
    files: dict[str, None] = {}
    for given in map(os.fspath, paths):
        if not os.path.lexists(given):
            found.missing.append(given)
        elif force_exclude and is_excluded(given, exclude, root):
            continue
        elif os.path.isdir(given):
            files.update(dict.fromkeys(_walk(given, exclude, root, found.unreadable)))
        else:
            files[os.path.normpath(given)] = None
    found.files = list(files)
    return found


def is_excluded(path: str, exclude: Iterable[str], root: Path) -> bool:
    """Whether a path lies in a skipped directory or matches ``exclude`` (only directories below
    ``root`` count: the project itself may live in a directory named ``build``)."""
    if matches_any(path, exclude, root):
        return True
    absolute = Path(os.path.abspath(path))
    try:
        parts = absolute.relative_to(root).parts
    except ValueError:
        return False
    depth = len(parts) if absolute.is_dir() else len(parts) - 1
    directories = [root.joinpath(*parts[: end + 1]) for end in range(depth)]
    return any(d.name in SKIPPED_DIRS or is_virtualenv(d) for d in directories)


@dataclass(frozen=True)
class LintedFiles:
    """Every file linted in one run, in order: what one file's analysis may read to follow calls
    into the others. Small and picklable: each worker process gets it once."""

    paths: tuple[str, ...] = ()
