"""The fast position pass gives what libcst's metadata providers give, node for node, on every
fixture (scripts, notebooks' code aside) and on odd layouts."""

from __future__ import annotations

from pathlib import Path

import libcst as cst
from libcst.metadata import MetadataWrapper, ParentNodeProvider, PositionProvider

from loopcheck.static.positions import positions, positions_and_parents

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


def _parsed() -> list[tuple[str, cst.Module]]:
    out = []
    for path in sorted(FIXTURES.rglob("*.py")):
        try:
            out.append((path.name, cst.parse_module(path.read_bytes().decode("utf-8-sig"))))
        except cst.ParserSyntaxError:
            continue  # the LC900 fixtures
    out += [(f"odd {i}", cst.parse_module(code)) for i, code in enumerate(ODD)]
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
