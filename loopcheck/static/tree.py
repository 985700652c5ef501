"""Fast walking of libcst trees.

``CSTNode.children`` runs a visitor over the node to collect them, which dominates the cost of
a full walk; reading the dataclass fields directly is several times faster. Whitespace,
comments and punctuation fields are never walked: no analysis looks at them. ``isinstance``
against libcst's abstract base classes goes through ``ABCMeta`` and is slow, so such checks are
cached per type.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import libcst as cst

_FIELDS: dict[type, tuple[str, ...]] = {}
_IS_NODE: dict[type, bool] = {}
_IS_EXPRESSION: dict[type, bool] = {}
# id(node) -> (node, its children), for the file being analysed; the node kept beside its
# children guards against an id reused after a node was freed
_KIDS: dict[int, tuple[cst.CSTNode, list[cst.CSTNode]]] = {}

# Fields that hold only layout: whitespace, comments, blank lines, brackets and punctuation.
_LAYOUT_PREFIXES = ("whitespace", "leading_lines", "lines_after", "trailing_whitespace")
_LAYOUT_FIELDS = {
    "lpar",
    "rpar",
    "lbracket",
    "rbracket",
    "lbrace",
    "rbrace",
    "comma",
    "dot",
    "semicolon",
    "colon",
    "equal",
    "header",
    "footer",
    "operator",
    "asynchronous",
    "newline",
    "star",
}


def _fields(kind: type) -> tuple[str, ...]:
    names = _FIELDS.get(kind)
    if names is None:
        names = tuple(
            f.name
            for f in dataclasses.fields(kind)
            if f.name not in _LAYOUT_FIELDS and not f.name.startswith(_LAYOUT_PREFIXES)
        )
        _FIELDS[kind] = names
    return names


def is_node(value: object) -> bool:
    kind = type(value)
    known = _IS_NODE.get(kind)
    if known is None:
        known = _IS_NODE[kind] = isinstance(value, cst.CSTNode)
    return known


def is_expression(node: cst.CSTNode) -> bool:
    kind = type(node)
    known = _IS_EXPRESSION.get(kind)
    if known is None:
        known = _IS_EXPRESSION[kind] = isinstance(node, cst.BaseExpression)
    return known


def forget() -> None:
    """Drop the cached children (a new file is about to be analysed)."""
    _KIDS.clear()


def kids(node: cst.CSTNode) -> list[cst.CSTNode]:
    """The child nodes of ``node`` that carry meaning, in field order (source order for
    expressions). The list is shared: callers must not change it."""
    cached = _KIDS.get(id(node))
    if cached is not None and cached[0] is node:
        return cached[1]
    out: list[cst.CSTNode] = []
    known = _IS_NODE
    for name in _fields(type(node)):
        value = getattr(node, name)
        kind = type(value)
        if kind is tuple or kind is list:
            for item in value:
                yes = known.get(type(item))
                if yes is None:
                    yes = is_node(item)
                if yes:
                    out.append(item)
        else:
            yes = known.get(kind)
            if yes is None:
                yes = is_node(value)
            if yes:
                out.append(value)
    _KIDS[id(node)] = (node, out)
    return out


def walk(node: cst.CSTNode) -> Iterator[cst.CSTNode]:
    """Every meaningful node under ``node`` (itself included), depth first, no recursion."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(kids(current))
