"""The fast position pass gives what libcst's metadata providers give, node for node, on every
fixture (scripts, notebooks' code aside) and on odd layouts."""

from __future__ import annotations

from pathlib import Path

import libcst as cst
from libcst.metadata import MetadataWrapper, ParentNodeProvider, PositionProvider

from loopcheck.static.index import FileContext
from loopcheck.static.positions import positions, positions_and_parents, statement_positions
from loopcheck.static.tree import walk

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
ODD = [
    "x = 1",  # no newline at the end
    "if a:\r\n    b()\r\n",  # Windows line endings
    "def f(\n    a,\n    b=(1,\n       2),\n):\n    return [\n        a for a in b\n    ]\n",
    "s = '''one\ntwo\n'''  # a string over lines\nt = 'x' \\\n    'y'\n",
    "@decorator\nclass C(Base, metaclass=M):\n    async def f(self): await g()\n",
    "with a as b, c as d: pass\nlambda *a, **k: (yield)\n",
    "",
]


def _texts() -> list[tuple[str, str]]:
    out = [(path.name, path.read_bytes().decode("utf-8-sig")) for path in _fixture_paths()]
    return out + [(f"odd {i}", code) for i, code in enumerate(ODD)]


def _fixture_paths() -> list[Path]:
    return sorted(FIXTURES.rglob("*.py"))


def _parsed() -> list[tuple[str, cst.Module]]:
    out = []
    for name, text in _texts():
        try:
            out.append((name, cst.parse_module(text)))
        except cst.ParserSyntaxError:
            continue  # the LC900 fixtures
    return out


def _provided(module: cst.Module) -> tuple[dict, dict]:
    wrapper = MetadataWrapper(module, unsafe_skip_copy=True)
    ranges = {
        node: (r.start.line, r.start.column, r.end.line, r.end.column)
        for node, r in wrapper.resolve(PositionProvider).items()
    }
    return ranges, dict(wrapper.resolve(ParentNodeProvider))


def test_positions_and_parents_match_libcst_providers() -> None:
    modules = _parsed()
    assert len(modules) > 300
    for name, module in modules:
        ranges, parents = _provided(module)
        ours, our_parents = positions_and_parents(module)
        assert dict(ours) == ranges, name
        assert dict(positions(module)) == ranges, name
        assert {n: id(p) for n, p in our_parents.items()} == {
            n: id(p) for n, p in parents.items()
        }, name


def test_a_libcst_without_the_expected_code_generation_falls_back(monkeypatch) -> None:
    module = cst.parse_module("def f():\n    opt.step()\n")
    expected = _provided(module)[0]

    def broken(self, value):  # noqa: ARG001
        raise AttributeError("codegen changed")

    monkeypatch.setattr("loopcheck.static.positions._State.add_token", broken)
    assert dict(positions(module)) == expected
    ranges, parents = positions_and_parents(module)
    assert dict(ranges) == expected and len(parents) == len(expected) - 1


def test_one_statement_alone_is_placed_as_in_the_whole_file() -> None:
    """Generating one top-level statement and finding it in the text gives each of its nodes
    the range the whole file's pass gives; where the text cannot place it, nothing."""
    placed = 0
    for name, text in _texts()[::6]:  # every sixth file: a sixth of the cost, same layouts
        try:
            module = cst.parse_module(text)
        except cst.ParserSyntaxError:
            continue
        whole = positions(module)
        for statement, indents in _statements(module):
            alone = statement_positions(module, text, statement, indents)
            if alone is None:
                continue
            placed += 1
            assert set(alone) == set(walk_all(statement)), name
            assert alone == {node: whole[node] for node in alone}, name
    assert placed > 2500, placed


def walk_all(node: cst.CSTNode) -> list[cst.CSTNode]:
    """Every node under ``node``, layout nodes included (what code generation visits)."""
    out = [node]
    for child in node.children:
        out += walk_all(child)
    return out


def _statements(module: cst.Module) -> list[tuple[cst.BaseStatement, tuple[str, ...]]]:
    """Every statement of a file at every depth, with the indentation of its blocks."""
    out: list[tuple[cst.BaseStatement, tuple[str, ...]]] = []

    def visit(node: cst.CSTNode, indents: tuple[str, ...]) -> None:
        if isinstance(node, cst.BaseStatement):
            out.append((node, indents))
        if isinstance(node, cst.IndentedBlock):
            indents = (*indents, module.default_indent if node.indent is None else node.indent)
        for child in node.children:
            visit(child, indents)

    for statement in module.body:
        visit(statement, ())
    return out


def test_a_statement_the_text_cannot_place_is_left_to_the_whole_file() -> None:
    twice = "x = 1\nx = 1\ndef f():\n    opt.step()\n    if a:\n        opt.step()\n"
    module = cst.parse_module(twice)
    assert statement_positions(module, twice, module.body[0]) is None  # it occurs twice
    assert statement_positions(module, twice, module.body[2]) is not None
    ctx = FileContext(module, "twice.py", source=twice)
    steps = [n for n in walk(module) if isinstance(n, cst.Call)]
    assert sorted((ctx.span(s).line, ctx.span(s).column) for s in steps) == [(4, 5), (6, 9)]
    last = "def f():\n    opt.step()"  # no newline at the end of the file
    module = cst.parse_module(last)
    assert statement_positions(module, last, module.body[0]) is None
    ctx = FileContext(module, "last.py", source=last)
    step = next(n for n in walk(module) if isinstance(n, cst.Call))
    assert (ctx.span(step).line, ctx.span(step).column) == (2, 5)


def test_a_file_index_locates_every_node_as_the_whole_file_pass_does() -> None:
    for name, text in _texts()[::7]:
        try:
            module = cst.parse_module(text)
        except cst.ParserSyntaxError:
            continue
        whole = FileContext(module, name)  # no text: the whole file's pass
        lazy = FileContext(module, name, source=text)
        for node in walk(module):
            assert lazy.span(node) == whole.span(node), name
