"""The lint cache: a file's findings, reused while nothing they depend on has changed.

An entry is one JSON file, named after the linted path and the settings that apply to it, and
holds the hash of the content it was linted from, the content hashes of the other linted files
its analysis read (its dependencies) and the findings. It is fresh while the file's content,
each dependency's content (or its absence from the run) and the linter are unchanged; the
linter's version and a hash of its own source name the directory the entries live in, so an
upgrade starts afresh.

The cache is only ever an accelerator: an entry that cannot be read, does not parse or does not
look like ours is a miss, and a cache that cannot be written is skipped with one warning. Each
entry is written to a temporary file and renamed over the old one, so concurrent runs never see
half an entry. The directory is ``.loopcheck_cache`` at the project root (the directory of the
``pyproject.toml`` that configures the run), or ``$LOOPCHECK_CACHE_DIR``; like ruff's, it holds
a ``.gitignore`` so that it is never committed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, fields
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from loopcheck import __version__
from loopcheck.diagnostic import Diagnostic, Edit, Fix, Span

CACHE_DIR_NAME = ".loopcheck_cache"
CACHE_DIR_ENV = "LOOPCHECK_CACHE_DIR"
GITIGNORE = "# Automatically created by loopcheck.\n*\n"
# https://bford.info/cachedir/: backup tools skip directories tagged so.
CACHEDIR_TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by loopcheck.\n"
)

# A dependency's state: the hash of its content when it is linted in the run, None otherwise.
DependencyState = str | None

_FIELDS = frozenset(f.name for f in fields(Diagnostic))
_POSITION = ("line", "column", "end_line", "end_column")


def content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def cache_directory(root: Path) -> Path:
    """Where the cache lives for a project rooted at ``root``."""
    moved = os.environ.get(CACHE_DIR_ENV)
    return Path(moved) if moved else root / CACHE_DIR_NAME


@lru_cache(maxsize=1)
def linter_fingerprint() -> str:
    """Changes whenever the findings for the same input could: loopcheck's version and source
    (an editable install changes without a new version), libcst's version, Python's."""
    digest = hashlib.blake2b(digest_size=8)
    try:
        libcst_version = metadata.version("libcst")
    except metadata.PackageNotFoundError:
        libcst_version = "?"
    digest.update(f"{sys.version_info[:2]} libcst {libcst_version}".encode())
    package = Path(__file__).resolve().parent
    for source in sorted(package.rglob("*.py")):
        digest.update(source.relative_to(package).as_posix().encode() + b"\0")
        digest.update(source.read_bytes() + b"\0")
    return digest.hexdigest()


class LintCache:
    """Findings by file, in one directory; see the module's docstring."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.entries = directory / f"{__version__}-{linter_fingerprint()}"
        self.problem: str | None = None  # why the cache could not be written, once it could not
        self._ready = False

    def lookup(
        self,
        path: str,
        settings: str,
        content: str,
        state_of: Callable[[str], DependencyState],
    ) -> tuple[Diagnostic, ...] | None:
        """The findings stored for ``path`` linted from ``content`` with ``settings``, when
        every dependency is still in the state ``state_of`` gives; None on any miss."""
        try:
            raw = self._entry_file(path, settings).read_bytes()
            entry = json.loads(raw)
            if entry["path"] != path or entry["content"] != content:
                return None
            dependencies = entry["dependencies"]
            if any(state_of(dep) != state for dep, state in dependencies.items()):
                return None
            return tuple(_diagnostic(record) for record in entry["diagnostics"])
        except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError):
            return None  # missing, unreadable, corrupt or foreign: lint the file again

    def store(
        self,
        path: str,
        settings: str,
        content: str,
        diagnostics: tuple[Diagnostic, ...],
        dependencies: Mapping[str, DependencyState],
    ) -> None:
        """Record ``path``'s findings; does nothing once writing has failed."""
        if self.problem is not None:
            return
        entry = {
            "path": path,
            "content": content,
            "dependencies": dict(dependencies),
            "diagnostics": [
                {name: value for name, value in asdict(d).items() if value is not None}
                for d in diagnostics
            ],
        }
        try:
            text = json.dumps(entry)
        except (TypeError, ValueError) as exc:  # a Diagnostic field JSON cannot hold
            self.problem = f"cannot store findings in the cache: {exc}"
            return
        try:
            self._prepare()
            _write_atomically(self._entry_file(path, settings), text)
        except OSError as exc:
            self.problem = f"cannot write the cache in {self.directory}: {exc.strerror or exc}"

    def _entry_file(self, path: str, settings: str) -> Path:
        key = json.dumps([os.path.abspath(path), path, settings])
        return self.entries / f"{content_hash(key.encode())}.json"

    def _prepare(self) -> None:
        if self._ready:
            return
        if not self.directory.is_dir():
            self.directory.mkdir(parents=True, exist_ok=True)
            _write_atomically(self.directory / ".gitignore", GITIGNORE)
            _write_atomically(self.directory / "CACHEDIR.TAG", CACHEDIR_TAG)
        self.entries.mkdir(exist_ok=True)
        self._ready = True


def _write_atomically(target: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``target``, then rename it over ``target``."""
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".json")
    try:
        if hasattr(os, "fchmod"):  # mkstemp's 0600 is for secrets; these are plain files
            os.fchmod(handle, 0o644)
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temporary, target)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def _diagnostic(record: Mapping[str, Any]) -> Diagnostic:
    """A stored diagnostic, checked field by field (a foreign file must not pass for ours)."""
    if not set(record) <= _FIELDS:
        raise ValueError("unknown field")
    values = dict(record)
    for name in ("path", "code", "message", "name"):
        _expect(values.get(name, ""), str)
    _ints(values, _POSITION)
    _expect(values.get("cell", 0), int)
    if "related" in values:
        values["related"] = Span(**_ints(values["related"], _POSITION, exact=True))
    if "fix" in values:
        values["fix"] = _fix(values["fix"])
    return Diagnostic(**values)


def _fix(record: Any) -> Fix:
    if not isinstance(record, dict) or set(record) != {"message", "edits", "applicability"}:
        raise ValueError("not a fix")
    _expect(record["message"], str)
    _expect(record["applicability"], str)
    _expect(record["edits"], list)
    edits = []
    for edit in record["edits"]:
        checked = _ints(edit, ("content", *_POSITION), exact=True)
        _expect(checked["content"], str)
        edits.append(Edit(**checked))
    return Fix(record["message"], tuple(edits), record["applicability"])


def _ints(record: Any, names: tuple[str, ...], *, exact: bool = False) -> dict[str, Any]:
    """``record`` (a copy) after checking that its position fields are ints; with ``exact``, it
    must have ``names`` and nothing else."""
    if not isinstance(record, dict) or (exact and set(record) != set(names)):
        raise ValueError("unexpected fields")
    for name in _POSITION:
        if name in names:
            _expect(record.get(name, 0), int)
    return dict(record)


def _expect(value: Any, kind: type) -> None:
    # bool is an int to isinstance; a stored position never is
    if type(value) is not kind:
        raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
