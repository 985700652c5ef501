"""The house rules of the package itself: every module says what it owns in a docstring, and
the modules import each other without cycles (imports under ``TYPE_CHECKING`` or inside a
function are not module-level dependencies)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "loopcheck"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(module: str, node: ast.ImportFrom) -> list[str]:
    if node.level:
        base = module.split(".")
        is_package = MODULES[module].name == "__init__.py"
        base = base[: len(base) - node.level + (1 if is_package else 0)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    names = [f"{prefix}.{alias.name}" for alias in node.names]
    found = [n for n in names if n in MODULES]
    return found or ([prefix] if prefix in MODULES else [])


def _top_level_imports(module: str) -> set[str]:
    tree = ast.parse(MODULES[module].read_text())
    out: set[str] = set()
    for stmt in tree.body:
        if isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.unparse(stmt.test):
            continue
        nodes = [stmt] if not isinstance(stmt, (ast.Try, ast.If)) else list(ast.walk(stmt))
        for node in nodes:
            if isinstance(node, ast.Import):
                out |= {a.name for a in node.names if a.name in MODULES}
            elif isinstance(node, ast.ImportFrom):
                out |= set(_resolve(module, node))
    out.discard(module)
    return out


def _cycle() -> list[str] | None:
    graph = {m: _top_level_imports(m) for m in MODULES}
    # a package's __init__ is imported with any of its modules: not a dependency edge back
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if node.startswith(nxt + "."):
                continue  # a module importing its own package's __init__
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_modules_import_each_other_without_cycles() -> None:
    assert _cycle() is None, " -> ".join(_cycle() or [])


def test_the_cycle_finder_sees_a_cycle(monkeypatch: pytest.MonkeyPatch) -> None:
    real = _top_level_imports

    def with_back_edge(module: str) -> set[str]:
        found = real(module)
        if module == "loopcheck.static.classes":
            found.add("loopcheck.static.index")  # index imports classes at module level
        return found

    monkeypatch.setattr(__import__(__name__), "_top_level_imports", with_back_edge)
    cycle = _cycle()
    assert cycle is not None and "loopcheck.static.index" in cycle


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_says_what_it_owns(module: str) -> None:
    doc = ast.get_docstring(ast.parse(MODULES[module].read_text()))
    assert doc and len(doc.split()) >= 2, f"{module} has no docstring saying what it owns"
