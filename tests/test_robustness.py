"""Bad input never crashes the linter: it gives LC900 or nothing, and never raises."""

from __future__ import annotations

import hypothesmith
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopcheck.api import lint_source

LOOP = """\
for x, y in loader:
    optimizer.zero_grad()
    loss = criterion(model(x), y)
    loss.backward()
    optimizer.step()
"""


def codes(source: str | bytes) -> list[tuple[int, str]]:
    return [(d.line, d.code) for d in lint_source(source, "input.py")]


def test_syntax_error_is_lc900_at_its_line() -> None:
    assert codes("import torch\nloss.backward()\nfor x in\n") == [(3, "LC900")]
    assert codes("import torch\nloss.backward(\n") == [(2, "LC900")]  # never closed


def test_non_utf8_file_is_lc900() -> None:
    assert codes(b"# caf\xe9\nloss.backward()\n") == [(1, "LC900")]


def test_binary_file_is_lc900() -> None:
    assert codes(b"\x7fELF\x00\x00backward\x00") == [(1, "LC900")]


def test_empty_and_blank_files_are_silent() -> None:
    assert codes("") == []
    assert codes("\n\n   \n") == []
    assert codes(b"\xef\xbb\xbf") == []


def test_bom_is_accepted() -> None:
    assert codes(b"\xef\xbb\xbf" + LOOP.encode()) == []


def test_deeply_nested_expression_does_not_crash() -> None:
    deep = "x = " + "(" * 5000 + "1" + ")" * 5000 + "\nloss.backward()\n"
    assert set(codes(deep)) <= {(1, "LC900")}
    calls = "loss = " + "f(" * 3000 + "1" + ")" * 3000 + "\nloss.backward()\n"
    assert set(codes(calls)) <= {(1, "LC900")}


def test_deeply_nested_blocks_do_not_crash() -> None:
    lines = []
    for depth in range(90):
        lines.append("    " * depth + "if x:")
    lines.append("    " * 90 + "loss.backward()")
    assert set(codes("\n".join(lines) + "\n")) <= {(1, "LC900")}


def test_large_file_is_linted() -> None:
    body = "".join(f"def f{i}(a):\n    return a + {i}\n\n" for i in range(16_700))  # 50k lines
    source = "import torch\n" + body + LOOP.replace("optimizer.zero_grad()", "pass")
    found = codes(source)
    assert [code for _, code in found] == ["LC101"]


def test_many_branches_stay_bounded() -> None:
    ifs = "".join(f"    if flag{i}:\n        log({i})\n" for i in range(200))
    source = (
        "for x in loader:\n    optimizer.zero_grad()\n"
        + ifs
        + ("    loss = model(x)\n    loss.backward()\n    optimizer.step()\n")
    )
    assert codes(source) == []


def test_doubling_definitions_are_read_once(monkeypatch) -> None:
    """Names defined from the previous one twice over (``a2 = a1 * a1 + a1 * a1``), a dozen
    deep, into a total LC501 asks about: each definition is read a bounded number of times,
    not once per path through the chain (4 ** 12 of them)."""
    from loopcheck.static import kept

    calls = 0
    real = kept._surely_a_graph

    def counting(*args, **kwargs):
        nonlocal calls
        calls += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(kept, "_surely_a_graph", counting)
    chain = "".join(f"    a{i} = a{i - 1} * a{i - 1} + a{i - 1} * a{i - 1}\n" for i in range(1, 13))
    source = (
        "def train(model, loader, optimizer):\n    total_loss = 0.0\n"
        "    for x, y in loader:\n        a0 = unknown(model(x))\n"
        + chain.replace("    a", "        a")
        + "        optimizer.zero_grad()\n        model(x).sum().backward()\n"
        "        optimizer.step()\n        total_loss += a12\n"
    )
    assert codes(source) == []
    assert 0 < calls < 5_000


def test_tensors_stored_on_self_in_many_methods_are_read_once(monkeypatch) -> None:
    """``self.router = self.router.cuda()`` in a dozen methods (Megatron's router tests): each
    store is read a bounded number of times when a loss's origin reaches ``self.router``, not
    once per path through the other methods' stores."""
    from loopcheck.static import dataflow

    calls = 0
    real = dataflow._Tracer.kept_on_self

    def counting(self, node, depth):
        nonlocal calls
        calls += 1
        return real(self, node, depth)

    monkeypatch.setattr(dataflow._Tracer, "kept_on_self", counting)
    methods = "".join(
        f"    def move_{i}(self):\n        self.router = self.router.cuda()\n"
        f"        self.mlp = self.mlp.cuda()\n\n"
        for i in range(12)
    )
    source = (
        "import torch\n\n\nclass Router:\n"
        "    def setup(self, mlp):\n        self.mlp = mlp\n"
        "        self.router = self.mlp.router\n\n" + methods + "    def train(self, batches):\n"
        "        optimizer = torch.optim.SGD(self.mlp.parameters(), lr=0.1)\n"
        "        for x in batches:\n            optimizer.zero_grad()\n"
        "            out = (self.router.weight @ x).sum() + self.mlp(x).sum()\n"
        "            out.backward()\n"
        "            optimizer.step()\n"
    )
    assert codes(source) == []
    assert 0 < calls < 2_000


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(hypothesmith.from_grammar())
def test_lint_never_raises_on_generated_programs(source: str) -> None:
    # Make the prefilter let every program through to the parser and the analysis.
    for finding in lint_source(source + "\nloss.backward()\n", "gen.py"):
        assert finding.line >= 1 and finding.column >= 1


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_lint_never_raises_on_random_bytes(data: bytes) -> None:
    for finding in lint_source(data + b"\nbackward", "bytes.py"):
        assert finding.code == "LC900"


statements = st.sampled_from(
    [
        "optimizer.zero_grad()",
        "loss = criterion(model(x), y)",
        "loss.backward()",
        "optimizer.step()",
        "scheduler.step()",
        "torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)",
        "if i % 4 == 0:\n        optimizer.step()",
        "if i % 4 == 0:\n        optimizer.zero_grad()",
        "continue",
        "break",
        "helper(model, optimizer)",
    ]
)


@settings(max_examples=150, deadline=None)
@given(st.lists(statements, max_size=12))
def test_lint_never_raises_on_shuffled_training_moves(body: list[str]) -> None:
    source = "import torch\nfor i, (x, y) in enumerate(loader):\n    pass\n" + "".join(
        f"    {line}\n" for line in body
    )
    lint_source(source, "shuffled.py")
