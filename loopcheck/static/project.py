"""The files linted together: import names resolved to the linted files that define them, each
parsed and indexed once, on demand, so that calls are followed across files."""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TypeVar

import libcst as cst

from loopcheck.static import stubs
from loopcheck.static.classes import ClassInfo
from loopcheck.static.index import FileContext
from loopcheck.static.parsing import parse_module

# A file that never mentions one of these defines no function that takes part in a step.
_MOVES = re.compile(rb"backward|zero_grad|\.step\(|\bstep\(|clip_grad|unscale_")
_MAX_REEXPORTS = 4
_IMPORTS = re.compile(rb"^[ \t]*(?:from[ \t]+(\.*[\w.]*)[ \t]+import|import[ \t]+([\w.]+))", re.M)

Definition = tuple[FileContext, "cst.FunctionDef | ClassInfo"]
_T = TypeVar("_T")


@dataclass(frozen=True)
class Outline:
    """What Python's own parser tells of a linted file: the names it defines at its top level,
    and its imports (name, what it stands for) in the order ``Imports`` meets them."""

    defined: frozenset[str]
    imports: tuple[tuple[str, str], ...]

    @cached_property
    def aliases(self) -> dict[str, str]:
        """The imports as ``Imports`` keeps them (a name imported twice: its first import)."""
        return dict(self.imports)


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
        # each file's index per depth (see ``_depth``), and its tree, parsed once for all depths
        self._contexts: dict[tuple[str, int], FileContext | None] = {}
        self._trees: dict[str, tuple[str, cst.Module] | None] = {}
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
        self._answers: dict[tuple[str, str, str], tuple[object, frozenset[str]]] = {}
        self._dependents: dict[str, set[tuple[str, str, str]]] = {}  # path: answers read it
        self._touched: set[str] | None = None
        self._outlines: dict[str, Outline | None] = {}
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

    def imports_helpers(self, raw: bytes, path: str) -> bool:
        """Whether a file that makes no move itself imports, from the linted files, a function
        or class that may take part in a training step (its loop may run that helper); the
        files the answer looked into are recorded as read."""
        if not self.imports_linted(raw):
            return False
        importer = _normal(path)
        outline = self._outline(importer) if self.source(importer) == raw else _outline(raw)
        if outline is None:
            return True  # Python cannot read it: the full parse reports why
        for local, qual in outline.imports:
            if self._takes_part_from(importer, qual):
                return True
            # ``steps.train_step(...)`` through ``from . import steps``
            called = re.finditer(rb"\b" + re.escape(local.encode()) + rb"\.(\w+)\s*\(", raw)
            names = {m[1].decode("ascii", "replace") for m in called}
            if any(self._takes_part_from(importer, f"{qual}.{name}") for name in names):
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
        """The index of a linted file parsed by the caller (from ``source``, when given), for
        its own analysis (depth 0)."""
        key = _normal(path)
        if source is not None and key not in self._trees and self._on_disk(key, source):
            self._trees[key] = (source, module)  # other files' indexes of it share the tree
        ctx = self._contexts.get((key, 0))
        if ctx is None or ctx.module is not module:
            if ctx is not None:
                self._forget_answers(ctx.path)  # they may point into the index being replaced
            self._contexts[key, 0] = None
            self._building += 1
            try:
                ctx = FileContext(module, path, self, source)
            finally:
                self._building -= 1
            self._contexts[key, 0] = ctx
        return ctx

    def _on_disk(self, key: str, text: str) -> bool:
        raw = self.source(key)
        return raw is not None and raw.decode("utf-8-sig", "replace") == text

    def parsed(self, path: str, text: str) -> cst.Module | None:
        """The tree of a linted file already parsed from ``text`` for another's sake."""
        tree = self._trees.get(_normal(path))
        return tree[1] if tree is not None and tree[0] == text else None

    def _forget_answers(self, path: str) -> None:
        """Drop the remembered answers that looked into the linted file ``path``."""
        for key in self._dependents.pop(path, ()):
            self._answers.pop(key, None)

    def source(self, path: str) -> bytes | None:
        key = _normal(path)
        if key not in self._sources:
            self._sources[key] = self._read(self._paths.get(key, path))
        return self._sources[key]

    @property
    def _depth(self) -> int:
        """How far from a file's own analysis an index built now lies: 1 for a file that the
        analysed one (or its own index) reaches, 2 for one reached while indexing another
        for its sake. An index of depth 2 does not look into its imports, one of depth 1
        looks one file further (see ``FileContext``'s external helpers). What a file is
        indexed for, not which files happened to be linted before it in this process,
        decides how far it looks: findings do not depend on file order or parallelism."""
        return min(self.loading + 1, 2)

    def _load(self, key: str, need_moves: bool) -> FileContext | None:
        depth = self._depth
        if (key, depth) in self._contexts:
            ctx = self._contexts[key, depth]
        else:
            raw = self.source(key)
            if raw is None or (need_moves and not _MOVES.search(raw)):
                return None
            self._contexts[key, depth] = None  # guards import cycles while indexing
            tree = self._tree(key, raw)
            self.loading += 1
            self._building += 1
            try:
                path = self._paths.get(key, key)  # a library model is no linted file
                ctx = FileContext(tree[1], path, self, tree[0]) if tree else None
            finally:
                self.loading -= 1
                self._building -= 1
            self._contexts[key, depth] = ctx
        if ctx is not None:
            self._note_read(key)
        return ctx

    def _tree(self, key: str, raw: bytes) -> tuple[str, cst.Module] | None:
        """A linted file's text and libcst tree (None when it cannot be parsed), parsed once."""
        if key not in self._trees:
            try:
                text = raw.decode("utf-8-sig")
                self._trees[key] = (text, parse_module(text))
            except (cst.ParserSyntaxError, UnicodeDecodeError, RecursionError, ValueError):
                self._trees[key] = None
        return self._trees[key]

    def _note_read(self, key: str) -> None:
        """Record that the answer being computed looked into the linted file ``key``."""
        path = self._paths.get(key, key)
        if self._touched is not None:
            self._touched.add(path)
        if key != self._current:
            self.reads.add(path)

    def _has_moves(self, key: str) -> bool:
        found = self._moves.get(key)
        if found is None:
            raw = self.source(key)
            found = self._moves[key] = raw is not None and _MOVES.search(raw) is not None
        return found

    def _remembered(self, kind: str, importer: str, qualname: str, answer: Callable[[], _T]) -> _T:
        """``answer()``, computed once per importing file and name while no file is being
        indexed; a remembered answer still records the files it looked into as read."""
        if self._building:
            return answer()
        key = (kind, importer, qualname)
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
            for path in touched:
                self._dependents.setdefault(path, set()).add(key)
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
        return self._definition_from(_normal(ctx.path), qualname)

    def _definition_from(self, importer: str, qualname: str) -> Definition | None:
        return self._remembered(
            "def", importer, qualname, lambda: self._definition(importer, qualname)
        )

    def _definition(self, importer: str, qualname: str) -> Definition | None:
        located = self._locate(importer, qualname)
        if located is None:
            return None
        other = self._load(located[0], need_moves=False)
        found = _defined(other, [located[1]]) if other is not None else None
        return (other, found) if other is not None and found is not None else None

    def _locate(self, importer: str, qualname: str, depth: int = 0) -> tuple[str, str] | None:
        """The linted file that defines what ``qualname`` names, and the name it has there,
        following re-exports. Only outlines are read: a file is parsed and indexed when what
        it defines is needed (a package's ``__init__`` is seldom worth libcst's parse)."""
        if depth > _MAX_REEXPORTS:
            return None
        modelled = stubs.locate(qualname)
        if modelled is not None:
            return _normal(modelled[0]), modelled[1]
        for module_key, names in self._candidates(importer, qualname):
            if module_key == importer:
                continue
            outline = self._outline(module_key)
            if outline is None:
                continue
            self._note_read(module_key)
            if len(names) != 1:
                continue
            if names[0] in outline.defined:
                return module_key, names[0]
            alias = outline.aliases.get(names[0])
            if alias is not None:
                return self._locate(module_key, alias, depth + 1)
        return None

    def _outline(self, key: str) -> Outline | None:
        """The names a linted file defines at its top level and what its imported names stand
        for, read with Python's parser; None when it cannot be read or parsed."""
        if key not in self._outlines:
            raw = self.source(key)
            self._outlines[key] = _outline(raw) if raw is not None else None
        return self._outlines[key]

    def takes_part(self, ctx: FileContext, qualname: str) -> bool:
        """Whether an imported name is a function (or a class with a method) of a linted file
        that may take part in a training step."""
        return self._takes_part_from(_normal(ctx.path), qualname)

    def _takes_part_from(self, importer: str, qualname: str) -> bool:
        return self._remembered(
            "part", importer, qualname, lambda: self._takes_part(importer, qualname)
        )

    def _takes_part(self, importer: str, qualname: str) -> bool:
        if stubs.locate(qualname) is not None:
            return True  # a library helper the analysis has a model of
        for module_key, _ in self._candidates(importer, qualname):
            if self.source(module_key) is None:
                continue
            self._note_read(module_key)  # (were it to make a move, the answer would change)
            if not self._has_moves(module_key) and os.path.basename(module_key) != "__init__.py":
                continue  # no move here; a package's __init__ may re-export one from elsewhere
            located = self._locate(importer, qualname)
            if located is None or located[0] != module_key and not self._has_moves(located[0]):
                return False  # re-exported from a file that makes no move either
            found = self._definition_from(importer, qualname)
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


def _outline(raw: bytes) -> Outline | None:
    """See :meth:`Project._outline`."""
    try:
        tree = ast.parse(raw)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    defined = frozenset(
        node.name
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
    )
    return Outline(defined, tuple(_aliases_of(tree)))


def _aliases_of(tree: ast.Module) -> list[tuple[str, str]]:
    """The (name, what it stands for) pairs of a module's imports, in the order ``Imports``
    meets them: later statements first, so that in a dict the first import wins."""
    aliases: list[tuple[str, str]] = []
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname is not None:
                    aliases.append((alias.asname, alias.name))
                else:
                    head = alias.name.split(".")[0]
                    aliases.append((head, head))
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            for alias in node.names:
                if alias.name == "*":
                    continue
                joined = f"{base}.{alias.name}" if node.module is not None else base + alias.name
                aliases.append((alias.asname or alias.name, joined if base else alias.name))
        else:
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                inner = getattr(node, field, None)
                if isinstance(inner, list):
                    stack.extend(inner)
    return aliases


def _defined(ctx: FileContext, names: list[str]) -> cst.FunctionDef | ClassInfo | None:
    head = names[0]
    if len(names) == 1:
        if head in ctx.functions:
            return ctx.functions[head]
        return ctx.classes.get(head)
    return None


def _normal(path: str) -> str:
    return os.path.normpath(os.path.abspath(path))
