"""Fast walking of libcst trees.

``CSTNode.children`` runs a visitor over the node to collect them, which dominates the cost of
a full walk; reading the dataclass fields directly is several times faster. ``isinstance``
against libcst's abstract base classes is slow too, so node-ness is cached per type.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import libcst as cst

_FIELDS: dict[type, tuple[str, ...]] = {}
_IS_NODE: dict[type, bool] = {}


def is_node(value: object) -> bool:
    kind = type(value)
    known = _IS_NODE.get(kind)
    if known is None:
        known = _IS_NODE[kind] = isinstance(value, cst.CSTNode)
    return known


def kids(node: cst.CSTNode) -> Iterator[cst.CSTNode]:
    """The child nodes of ``node``, in field order (source order for expressions)."""
    names = _FIELDS.get(type(node))
    if names is None:
        names = tuple(f.name for f in dataclasses.fields(node))
        _FIELDS[type(node)] = names
    for name in names:
        value = getattr(node, name)
        if type(value) in (tuple, list):
            for item in value:
                if is_node(item):
                    yield item
        elif is_node(value):
            yield value


def walk(node: cst.CSTNode) -> Iterator[cst.CSTNode]:
    """Every node under ``node`` (itself included), depth first, without recursion."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(kids(current))
