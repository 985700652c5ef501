"""The fast parse gives libcst's own tree, and leaves libcst's checks of new nodes in place."""

from __future__ import annotations

from pathlib import Path

import libcst as cst
import pytest

from loopcheck.static.parsing import parse_module

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def test_the_same_tree_as_libcst_on_every_fixture() -> None:
    checked = 0
    for path in sorted(FIXTURES.rglob("*.py")):
        text = path.read_bytes().decode("utf-8-sig")
        try:
            expected = cst.parse_module(text)
        except cst.ParserSyntaxError:
            with pytest.raises(cst.ParserSyntaxError):
                parse_module(text)
            continue
        got = parse_module(text)
        assert got.deep_equals(expected), path.name
        assert got.code == text, path.name
        checked += 1
    assert checked > 100


def _invalid_node() -> cst.CSTNode:
    # Python has no name "1x": libcst refuses to build it
    return cst.Name("1x")


def test_nodes_built_after_a_parse_are_still_checked() -> None:
    parse_module("x = 1\n")
    with pytest.raises(cst.CSTValidationError):
        _invalid_node()


def test_nodes_built_after_a_failed_parse_are_still_checked() -> None:
    with pytest.raises(cst.ParserSyntaxError):
        parse_module("def f(:\n")
    with pytest.raises(cst.CSTValidationError):
        _invalid_node()
