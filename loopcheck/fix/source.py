"""A parsed file as fixers read it: nodes found by position, their blocks, their lines, and
the line edits that insert or move whole statements.

Every fix works on whole lines of one block, so the code it moves keeps its own formatting and
comments byte for byte, and the rest of the file is untouched.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import libcst as cst

from loopcheck.diagnostic import Diagnostic, Edit, Span
from loopcheck.static.parsing import parse_module
from loopcheck.static.positions import positions_and_parents

_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")
_SCOPES = (cst.FunctionDef, cst.ClassDef, cst.Lambda)
_LOOPS = (cst.For, cst.While)


def split_lines(text: str) -> list[str]:
    """The lines of ``text`` with their endings, numbered as Python numbers them."""
    return _LINE.findall(text)


@dataclass(frozen=True)
class Block:
    """The statements of an indented block (or of the module) and where one of them stands."""

    owner: cst.IndentedBlock | cst.Module
    body: Sequence[cst.BaseStatement]
    index: int

    @property
    def before(self) -> Sequence[cst.BaseStatement]:
        return self.body[: self.index]

    @property
    def after(self) -> Sequence[cst.BaseStatement]:
        return self.body[self.index + 1 :]


class SourceFile:
    """One file's text and tree, with positions and parents resolved once."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.module = parse_module(text)
        self._positions, self._parents = positions_and_parents(self.module)
        self.lines = split_lines(text)
        self.newline = self.module.default_newline
        self._by_span: dict[tuple[int, int, int, int], list[cst.CSTNode]] | None = None

    # -- positions ------------------------------------------------------------------------------

    def nodes_at(self, span: Span | Diagnostic) -> list[cst.CSTNode]:
        """The nodes whose range is exactly ``span``, outermost first."""
        if self._by_span is None:
            self._by_span = {}
            for node, (line, column, end_line, end_column) in self._positions.items():
                key = (line, column + 1, end_line, end_column + 1)
                self._by_span.setdefault(key, []).append(node)
        found = self._by_span.get((span.line, span.column, span.end_line, span.end_column), [])
        return sorted(found, key=self.depth)

    def depth(self, node: cst.CSTNode) -> int:
        depth = 0
        while node in self._parents:
            node = self._parents[node]
            depth += 1
        return depth

    def parent(self, node: cst.CSTNode) -> cst.CSTNode | None:
        return self._parents.get(node)

    def ancestors(self, node: cst.CSTNode) -> Iterator[cst.CSTNode]:
        parent = self._parents.get(node)
        while parent is not None:
            yield parent
            parent = self._parents.get(parent)

    # -- statements -----------------------------------------------------------------------------

    def statement_of(self, node: cst.CSTNode) -> cst.BaseStatement | None:
        """The innermost statement holding ``node`` (itself if it is one)."""
        for candidate in (node, *self.ancestors(node)):
            if isinstance(candidate, cst.BaseStatement):
                return candidate
        return None

    def flagged_statement(self, span: Span | Diagnostic) -> cst.BaseStatement | None:
        """The statement a finding blames as a whole: a line holding just the flagged call
        (``opt.zero_grad()``, ``norm = clip_grad_norm_(...)``) or a statement flagged entirely
        (``for p in params: p.grad = None``). None when the flagged code is only part of a line."""
        for node in self.nodes_at(span):
            if isinstance(node, cst.BaseCompoundStatement):
                return node
            stmt = self.statement_of(node)
            if not isinstance(stmt, cst.SimpleStatementLine) or len(stmt.body) != 1:
                continue
            small = stmt.body[0]
            if isinstance(small, (cst.Expr, cst.Assign)) and small.value is node:
                return stmt
        return None

    def call_at(self, span: Span | Diagnostic) -> cst.Call | None:
        return next((n for n in self.nodes_at(span) if isinstance(n, cst.Call)), None)

    def block_of(self, stmt: cst.BaseStatement) -> Block | None:
        """The block ``stmt`` is one statement of; None inside a one-line suite (``if x: y``)."""
        owner = self._parents.get(stmt)
        if not isinstance(owner, (cst.IndentedBlock, cst.Module)):
            return None
        body = owner.body
        index = next((i for i, s in enumerate(body) if s is stmt), None)
        return None if index is None else Block(owner, body, index)

    def scope_of(self, node: cst.CSTNode) -> cst.CSTNode:
        """The function, class or lambda around ``node``, or the module."""
        return next((a for a in self.ancestors(node) if isinstance(a, _SCOPES)), self.module)

    def loop_of(self, node: cst.CSTNode) -> cst.For | cst.While | None:
        """The innermost loop around ``node`` within its own function."""
        for ancestor in self.ancestors(node):
            if isinstance(ancestor, _LOOPS):
                return ancestor
            if isinstance(ancestor, _SCOPES):
                return None
        return None

    def code(self, node: cst.CSTNode) -> str:
        """The source of ``node`` on one line, shortened, for messages."""
        text = " ".join(self.module.code_for_node(node).split())
        return text if len(text) <= 60 else text[:57] + "..."

    # -- lines ----------------------------------------------------------------------------------

    def first_line(self, stmt: cst.BaseStatement) -> int:
        """The first line of ``stmt``, counting the comment lines right above it as its own."""
        line = self._positions[stmt][0]
        for leading in reversed(stmt.leading_lines):
            if leading.comment is None:
                break
            line -= 1
        return line

    def last_line(self, stmt: cst.BaseStatement) -> int:
        return self._positions[stmt][2]

    def indent(self, stmt: cst.BaseStatement) -> str:
        """The indentation of the line ``stmt`` starts on."""
        line = self.lines[self._positions[stmt][0] - 1]
        return line[: len(line) - len(line.lstrip(" \t"))]

    def lines_of(self, stmt: cst.BaseStatement) -> str:
        """``stmt`` with its own comment lines, as text ending in a newline."""
        text = "".join(self.lines[self.first_line(stmt) - 1 : self.last_line(stmt)])
        return text if text.endswith(("\n", "\r")) else text + self.newline

    # -- edits ----------------------------------------------------------------------------------

    def delete(self, stmt: cst.BaseStatement) -> Edit:
        """Remove ``stmt`` and its own comment lines."""
        first, last = self.first_line(stmt), self.last_line(stmt)
        return Edit("", first, 1, last + 1, 1)

    def insert_before(self, stmt: cst.BaseStatement, content: str) -> Edit:
        """Put whole lines of ``content`` above ``stmt`` and its own comment lines."""
        line = self.first_line(stmt)
        return Edit(content, line, 1, line, 1)

    def insert_after(self, stmt: cst.BaseStatement, content: str) -> Edit:
        """Put whole lines of ``content`` right below ``stmt``."""
        last = self.last_line(stmt)
        if last < len(self.lines) or self.lines[-1].endswith(("\n", "\r")):
            return Edit(content, last + 1, 1, last + 1, 1)
        # the file's last line has no newline: end it first
        end = len(self.lines[-1]) + 1
        return Edit(self.newline + content.rstrip("\r\n"), last, end, last, end)

    def replace(self, node: cst.CSTNode, content: str) -> Edit:
        """Put ``content`` in place of the code of ``node`` (within or across lines)."""
        line, column, end_line, end_column = self._positions[node]
        return Edit(content, line, column + 1, end_line, end_column + 1)

    def statement_text(self, indent: str, code: str) -> str:
        """One new line of code at ``indent``."""
        return f"{indent}{code}{self.newline}"
