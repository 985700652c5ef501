"""Source text to libcst trees, without checking again what libcst's own parser built."""

from __future__ import annotations

import threading

import libcst as cst
from libcst._nodes.base import CSTNode

# Every libcst node checks itself when it is built (``CSTNode.__post_init__`` calls
# ``_validate``: parentheses balanced, required whitespace present). A node that the parser
# builds from text that parsed is valid by construction, and the checks are about a sixth of
# the time of a parse, so they are skipped while parsing. Nodes built anywhere else (a fixer's
# ``with_changes``) are checked as usual. Should libcst move the hook, parsing is plain.
_VALIDATE = CSTNode.__dict__.get("__post_init__")
_LOCK = threading.Lock()


def _trusted(self: CSTNode) -> None:
    """The parser's nodes: nothing to check."""


def parse_module(text: str) -> cst.Module:
    """:func:`libcst.parse_module` of ``text``, the same tree, faster; raises what it raises."""
    if _VALIDATE is None:
        return cst.parse_module(text)
    with _LOCK:
        CSTNode.__post_init__ = _trusted  # type: ignore[method-assign]
        try:
            return cst.parse_module(text)
        finally:
            CSTNode.__post_init__ = _VALIDATE  # type: ignore[method-assign]
