"""Where each node of a parsed file stands (line and column): libcst's syntactic positions,
computed by one code generation pass that does less work per token and per node.

libcst's ``PositionProvider`` splits every token with a regular expression and enters a
generator-based context manager per node; on training scripts that pass is slower than parsing.
This state gives the same ranges (checked against the provider in the tests) at a fraction of
the cost, and falls back to the provider if libcst's code generation ever changes shape.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import libcst as cst
from libcst._nodes.internal import CodegenState
from libcst.metadata import CodeRange, MetadataWrapper, ParentNodeProvider, PositionProvider

from loopcheck.static.tree import kids

_NEWLINES = re.compile(r"\r\n?|\n")
Range = tuple[int, int, int, int]


class _Recorder:
    """The ``with`` block of one node's syntactic range (a class, not a generator)."""

    __slots__ = ("state", "node", "start_node", "end_node", "start")

    def __init__(
        self,
        state: _State,
        node: cst.CSTNode,
        start_node: cst.CSTNode | None,
        end_node: cst.CSTNode | None,
    ) -> None:
        self.state = state
        self.node = node
        self.start_node = start_node
        self.end_node = end_node

    def __enter__(self) -> None:
        self.start: tuple[int, int] = (self.state.line, self.state.column)

    def __exit__(self, *exc: object) -> None:
        state = self.state
        ranges = state.ranges
        start = ranges[self.start_node][:2] if self.start_node is not None else self.start
        end = ranges[self.end_node][2:] if self.end_node is not None else (state.line, state.column)
        ranges[self.node] = start + end


class _State(CodegenState):
    """A code generation state that tracks the line and column, and records ranges."""

    def __init__(self, module: cst.Module, parents: bool) -> None:
        super().__init__(
            default_indent=module.default_indent, default_newline=module.default_newline
        )
        self.line = 1
        self.column = 0
        self.ranges: dict[cst.CSTNode, Range] = {}
        self._starts: list[tuple[int, int]] = []
        self.parents: dict[cst.CSTNode, cst.CSTNode] | None = {} if parents else None
        self._open: list[cst.CSTNode] = []

    def add_indent_tokens(self) -> None:
        for token in self.indent_tokens:
            self.add_token(token)

    def add_token(self, value: str) -> None:
        self.tokens.append(value)
        if "\n" not in value and "\r" not in value:
            self.column += len(value)
            return
        segments = _NEWLINES.split(value)
        self.line += len(segments) - 1
        self.column = len(segments[-1])

    def before_codegen(self, node: cst.CSTNode) -> None:
        self._starts.append((self.line, self.column))
        if self.parents is not None:
            if self._open:
                self.parents[node] = self._open[-1]
            self._open.append(node)

    def after_codegen(self, node: cst.CSTNode) -> None:
        start = self._starts.pop()
        if self.parents is not None:
            self._open.pop()
        if node not in self.ranges:  # a syntactic range recorded inside wins
            self.ranges[node] = (*start, self.line, self.column)

    def record_syntactic_position(  # type: ignore[override]
        self,
        node: cst.CSTNode,
        *,
        start_node: cst.CSTNode | None = None,
        end_node: cst.CSTNode | None = None,
    ) -> _Recorder:
        return _Recorder(self, node, start_node, end_node)


def positions(module: cst.Module) -> Mapping[cst.CSTNode, Range]:
    """The syntactic range of every node of ``module`` as libcst's ``PositionProvider`` gives
    it: (line, column, end line, end column), lines from 1 and columns from 0."""
    try:
        state = _State(module, parents=False)
        module._codegen(state)
        return state.ranges
    except Exception:  # a libcst whose code generation differs: its own provider
        provided = MetadataWrapper(module, unsafe_skip_copy=True).resolve(PositionProvider)
        return {node: _flat(rng) for node, rng in provided.items()}


def statement_positions(
    module: cst.Module,
    source: str,
    statement: cst.BaseStatement,
    indents: tuple[str, ...] = (),
) -> dict[cst.CSTNode, Range] | None:
    """:func:`positions` of the nodes of one statement of ``module``, found without generating
    the rest of the file: the statement's code is generated alone (indented by ``indents``, the
    indentation of each block around it), and it is found in ``source`` (the text ``module``
    was parsed from) where it occurs once, at the start of a line. None where that cannot be
    told (the code occurs twice; libcst's code generation differs): the caller takes an
    enclosing statement, or :func:`positions`."""
    if not module.has_trailing_newline:
        return None  # the last statement's newline is not in the source
    try:
        state = _State(module, parents=False)
        state.indent_tokens = list(indents)
        statement._codegen(state)
    except Exception:
        return None
    code = "".join(state.tokens)
    start = source.find(code)
    if (
        not code
        or start < 0
        or source.find(code, start + 1) >= 0
        or (start > 0 and source[start - 1] not in "\r\n")
    ):
        return None
    shift = len(_NEWLINES.findall(source, 0, start))
    return {
        node: (line + shift, column, end_line + shift, end_column)
        for node, (line, column, end_line, end_column) in state.ranges.items()
    }


def positions_and_parents(
    module: cst.Module,
) -> tuple[Mapping[cst.CSTNode, Range], Mapping[cst.CSTNode, cst.CSTNode]]:
    """:func:`positions`, and the parent of every node but the module (code generation
    visits each node inside its parent, as libcst's ``ParentNodeProvider`` sees them)."""
    try:
        state = _State(module, parents=True)
        module._codegen(state)
        assert state.parents is not None
        return state.ranges, state.parents
    except Exception:
        wrapper = MetadataWrapper(module, unsafe_skip_copy=True)
        provided = wrapper.resolve(PositionProvider)
        flat = {node: _flat(rng) for node, rng in provided.items()}
        return flat, wrapper.resolve(ParentNodeProvider)


def _flat(rng: CodeRange) -> Range:
    return (rng.start.line, rng.start.column, rng.end.line, rng.end.column)


class Statements:
    """The innermost statement around each node of a file, and around each statement the one
    that holds it and the indentation of the blocks it sits in."""

    def __init__(self, module: cst.Module) -> None:
        self.owner: dict[int, cst.BaseStatement] = {}
        self.around: dict[int, tuple[cst.BaseStatement | None, tuple[str, ...]]] = {}
        pending: list[tuple[cst.BaseStatement, cst.BaseStatement | None, tuple[str, ...]]] = [
            (statement, None, ()) for statement in module.body
        ]
        while pending:
            statement, parent, indents = pending.pop()
            self.around[id(statement)] = (parent, indents)
            inside: list[cst.CSTNode] = [statement]
            while inside:
                node = inside.pop()
                self.owner[id(node)] = statement
                if type(node) is cst.IndentedBlock:
                    indent = module.default_indent if node.indent is None else node.indent
                    nested = (*indents, indent)
                    pending += [(inner, statement, nested) for inner in node.body]
                    body = {id(inner) for inner in node.body}
                    inside += [k for k in kids(node) if id(k) not in body]
                else:
                    inside += kids(node)
