"""The files linted together: import names resolved to the linted files that define them, each
parsed and indexed once, on demand, so that calls are followed across files."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import libcst as cst

from loopcheck.static.classes import ClassInfo
from loopcheck.static.index import FileContext
from loopcheck.static.parsing import parse_module

# A file that never mentions one of these defines no function that takes part in a step.
_MOVES = re.compile(rb"backward|zero_grad|\.step\(|\bstep\(|clip_grad|unscale_")
_MAX_REEXPORTS = 4
_IMPORTS = re.compile(rb"^[ \t]*(?:from[ \t]+(\.*[\w.]*)[ \t]+import|import[ \t]+([\w.]+))", re.M)

Definition = tuple[FileContext, "cst.FunctionDef | ClassInfo"]
_T = TypeVar("_T")


def _read(path: str) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except OSError:
        return None


class Project:
    """The set of linted files. ``definition`` finds what an imported name refers to;
    ``reads`` lists, since the last ``begin``, the other files an analysis looked into (a
    cache entry of one file depends on them)."""

    def __init__(self, paths: Iterable[str], read: Callable[[str], bytes | None] = _read) -> None:
        self._paths: dict[str, str] = {}
        for path in paths:
            self._paths.setdefault(_normal(path), path)
        self._read = read
        self._contexts: dict[str, FileContext | None] = {}
        self._sources: dict[str, bytes | None] = {}
        self._current: str | None = None
        self._stems: frozenset[str] | None = None
        # files being indexed for another's sake: their own imports are not followed further,
        # so that relevance never walks the whole import graph
        self.loading = 0
        self._building = 0  # files under construction: what they resolve may still change
        self.reads: set[str] = set()
        # answers of ``definition`` and ``takes_part`` per (file, name), with the files each
        # answer looked into, so that a later file reusing the answer depends on them too
        self._answers: dict[tuple[str, FileContext, str], tuple[object, frozenset[str]]] = {}
        self._touched: set[str] | None = None
        self._moves: dict[str, bool] = {}
        self._mentions: dict[tuple[str, str], frozenset[str]] = {}  # (name, module): files

    def imports_linted(self, raw: bytes) -> bool:
        """Whether a file's text imports a module named like one of the linted files (its
        loop may call a helper that makes the moves)."""
        if len(self._paths) < 2:
            return False
        if self._stems is None:
            stems = set()
            for path in self._paths:
                stem = os.path.splitext(os.path.basename(path))[0]
                stems.add(os.path.basename(os.path.dirname(path)) if stem == "__init__" else stem)
            self._stems = frozenset(stems)
        for match in _IMPORTS.finditer(raw):
            dotted = (match.group(1) or match.group(2) or b"").decode("ascii", "replace")
            if dotted.startswith(".") or any(p in self._stems for p in dotted.split(".")):
                return True
        return False

    @property
    def several(self) -> bool:
        """Whether other files are linted with each one (their functions may call its own)."""
        return len(self._paths) > 1

    def mentioned_elsewhere(self, path: str, name: str) -> bool:
        """Whether a linted file other than ``path`` may import and call its function
        ``name``: it names the function (not defining its own of that name) and names the
        module (or imports relatively). The answer depends on every other file: each is
        recorded as read, so that a cached finding is dropped when one of them changes."""
        own = _normal(path)
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem == "__init__":
            stem = os.path.basename(os.path.dirname(path))
        found = self._mentions.get((name, stem))
        if found is None:
            # another file's function of the same name does not call this one
            word = re.compile(rb"(?<!def )\b" + re.escape(name.encode()) + rb"\b")
            module = re.compile(
                rb"\b" + re.escape(stem.encode()) + rb"\b|^[ \t]*from[ \t]+\.", re.M
            )
            found = self._mentions[(name, stem)] = frozenset(
                key
                for key in self._paths
                if (raw := self.source(key)) is not None
                and name.encode() in raw
                and word.search(raw) is not None
                and module.search(raw) is not None
            )
        others = found - {own}
        if others:
            self.reads.update(self._paths[key] for key in others)
        else:
            self.reads.update(self._paths[key] for key in self._paths if key != own)
        return bool(others)

    def __contains__(self, path: str) -> bool:
        return _normal(path) in self._paths

    def begin(self, path: str) -> None:
        """Start the analysis of one linted file: forget which files the last one read."""
        self._current = _normal(path)
        self.reads = set()

    def context(self, path: str, module: cst.Module, source: str | None = None) -> FileContext:
        """The index of a linted file parsed by the caller (from ``source``, when given)."""
        key = _normal(path)
        ctx = self._contexts.get(key)
        if ctx is None or ctx.module is not module:
            self._contexts[key] = None  # files importing this one back see it as opaque
            self._answers.clear()  # some may point into the index being replaced
            self._building += 1
            try:
                ctx = FileContext(module, path, self, source)
            finally:
                self._building -= 1
            self._contexts[key] = ctx
        return ctx

    def source(self, path: str) -> bytes | None:
        key = _normal(path)
        if key not in self._sources:
            self._sources[key] = self._read(self._paths.get(key, path))
        return self._sources[key]

    def _load(self, key: str, need_moves: bool) -> FileContext | None:
        if key in self._contexts:
            ctx = self._contexts[key]
        else:
            raw = self.source(key)
            if raw is None or (need_moves and not _MOVES.search(raw)):
                return None
            self._contexts[key] = None  # guards import cycles while indexing
            text = None
            try:
                text = raw.decode("utf-8-sig")
                module = parse_module(text)
            except (cst.ParserSyntaxError, UnicodeDecodeError, RecursionError, ValueError):
                module = None
            self.loading += 1
            self._building += 1
            try:
                ctx = (
                    FileContext(module, self._paths[key], self, text)
                    if module is not None
                    else None
                )
            finally:
                self.loading -= 1
                self._building -= 1
            self._contexts[key] = ctx
        if ctx is not None:
            if self._touched is not None:
                self._touched.add(ctx.path)
            if key != self._current:
                self.reads.add(ctx.path)
        return ctx

    def _has_moves(self, key: str) -> bool:
        found = self._moves.get(key)
        if found is None:
            raw = self.source(key)
            found = self._moves[key] = raw is not None and _MOVES.search(raw) is not None
        return found

    def _remembered(
        self, kind: str, ctx: FileContext, qualname: str, answer: Callable[[], _T]
    ) -> _T:
        """``answer()``, computed once per file and name while no file is being indexed; a
        remembered answer still records the files it looked into as read."""
        if self._building:
            return answer()
        key = (kind, ctx, qualname)
        hit = self._answers.get(key)
        if hit is None:
            outer, self._touched = self._touched, set()
            try:
                value = answer()
            finally:
                touched, self._touched = self._touched, outer
            if outer is not None:
                outer |= touched
            hit = self._answers[key] = (value, frozenset(touched))
        else:
            if self._touched is not None:
                self._touched |= hit[1]
            current = self._current
            self.reads.update(p for p in hit[1] if _normal(p) != current)
        return hit[0]  # type: ignore[return-value]

    # names

    def definition(self, ctx: FileContext, qualname: str) -> Definition | None:
        """The function or class of a linted file that ``qualname`` (a name qualified through
        ``ctx``'s imports) refers to, following re-exports by package ``__init__`` files."""
        return self._remembered("def", ctx, qualname, lambda: self._definition(ctx, qualname))

    def _definition(self, ctx: FileContext, qualname: str, depth: int = 0) -> Definition | None:
        if depth > _MAX_REEXPORTS:
            return None
        for module_key, names in self._candidates(ctx.path, qualname):
            other = self._load(module_key, need_moves=False)
            if other is None or other is ctx:
                continue
            found = _defined(other, names)
            if found is not None:
                return other, found
            alias = other.imports.aliases.get(names[0])
            if alias is not None and len(names) == 1:
                return self._definition(other, alias, depth + 1)
        return None

    def takes_part(self, ctx: FileContext, qualname: str) -> bool:
        """Whether an imported name is a function (or a class with a method) of a linted file
        that may take part in a training step."""
        return self._remembered("part", ctx, qualname, lambda: self._takes_part(ctx, qualname))

    def _takes_part(self, ctx: FileContext, qualname: str) -> bool:
        for module_key, _ in self._candidates(ctx.path, qualname):
            if self.source(module_key) is None:
                continue
            if not self._has_moves(module_key) and os.path.basename(module_key) != "__init__.py":
                continue  # no move here; a package's __init__ may re-export one from elsewhere
            found = self.definition(ctx, qualname)
            if found is None:
                return False
            other, definition = found
            if isinstance(definition, ClassInfo):
                return any(id(m) in other.relevant for m in definition.methods.values())
            return id(definition) in other.relevant
        return False

    def _candidates(self, importer: str, qualname: str) -> Iterable[tuple[str, list[str]]]:
        """(linted file, names inside it) pairs ``qualname`` may denote, nearest first."""
        dots = len(qualname) - len(qualname.lstrip("."))
        parts = [p for p in qualname.lstrip(".").split(".") if p]
        if not parts:
            return
        here = os.path.dirname(_normal(importer))
        if dots:
            for _ in range(dots - 1):
                here = os.path.dirname(here)
            roots = [here]
        else:
            roots = []
            while True:
                roots.append(here)
                parent = os.path.dirname(here)
                if parent == here:
                    break
                here = parent
        for split in range(len(parts) - 1, 0, -1):
            module, names = parts[:split], parts[split:]
            for root in roots:
                base = os.path.join(root, *module)
                for candidate in (base + ".py", os.path.join(base, "__init__.py")):
                    if candidate in self._paths:
                        yield candidate, names
        if dots and len(parts) >= 1:
            # ``from . import helpers`` then ``helpers.train(...)`` arrives as ``.helpers.train``
            init = os.path.join(roots[0], "__init__.py")
            if init in self._paths:
                yield init, parts


def _defined(ctx: FileContext, names: list[str]) -> cst.FunctionDef | ClassInfo | None:
    head = names[0]
    if len(names) == 1:
        if head in ctx.functions:
            return ctx.functions[head]
        return ctx.classes.get(head)
    return None


def _normal(path: str) -> str:
    return os.path.normpath(os.path.abspath(path))
