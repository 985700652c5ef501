"""What fixers ask of the statements around a fix: the calls they make, the names they read
and write, and whether they can leave the block early.

Plain syntax, read conservatively: a fixer uses these answers only to refuse a fix that might
change what the code means, never to find a bug (that is the analysis's job).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import libcst as cst

_SCOPES = (cst.FunctionDef, cst.ClassDef, cst.Lambda)
_LOOPS = (cst.For, cst.While)


def _walk(node: cst.CSTNode, *, into_loops: bool = True) -> Iterator[cst.CSTNode]:
    """Every node under ``node`` (itself included), not entering nested functions or classes
    (nor nested loops when ``into_loops`` is false)."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        for child in reversed(current.children):
            if isinstance(child, _SCOPES) or (not into_loops and isinstance(child, _LOOPS)):
                continue
            stack.append(child)


def nodes(node: cst.CSTNode) -> Iterator[cst.CSTNode]:
    """Every node under ``node`` (itself included), not entering nested functions or classes."""
    return _walk(node)


def dotted(expr: cst.BaseExpression) -> str | None:
    """``a.b.c`` for a chain of names, else None."""
    if isinstance(expr, cst.Name):
        return expr.value
    if isinstance(expr, cst.Attribute):
        base = dotted(expr.value)
        return f"{base}.{expr.attr.value}" if base is not None else None
    return None


def method_calls(node: cst.CSTNode, method: str) -> list[cst.Call]:
    """The calls ``<receiver>.<method>(...)`` under ``node``."""
    return [
        n
        for n in _walk(node)
        if isinstance(n, cst.Call)
        and isinstance(n.func, cst.Attribute)
        and n.func.attr.value == method
    ]


def receiver(call: cst.Call) -> str | None:
    """The dotted receiver of a method call: ``self.optimizer`` for ``self.optimizer.step()``."""
    return dotted(call.func.value) if isinstance(call.func, cst.Attribute) else None


def positional(call: cst.Call) -> list[cst.BaseExpression]:
    return [arg.value for arg in call.args if arg.keyword is None and not arg.star]


def steps(node: cst.CSTNode) -> bool:
    """Whether a ``.step(...)`` call is under ``node``."""
    return bool(method_calls(node, "step"))


def scaler_steps(node: cst.CSTNode) -> list[tuple[str, str]]:
    """(receiver, argument) of each ``x.step(y)`` under ``node`` with one argument, a name:
    ``scaler.step(optimizer)`` when ``scales_with`` says the receiver is a scaler."""
    found = []
    for call in method_calls(node, "step"):
        args = positional(call)
        scaler = receiver(call)
        optimizer = dotted(args[0]) if len(args) == 1 and len(call.args) == 1 else None
        if scaler is not None and optimizer is not None:
            found.append((scaler, optimizer))
    return found


def scales_with(scope: cst.CSTNode, scaler: str) -> bool:
    """Whether ``scaler.scale(...)`` is called in ``scope``: the receiver is a loss scaler."""
    return any(receiver(call) == scaler for call in method_calls(scope, "scale"))


def backprops(node: cst.CSTNode) -> bool:
    return bool(method_calls(node, "backward"))


def leaves_early(node: cst.CSTNode) -> bool:
    """Whether some path through ``node`` leaves the block it stands in before its end:
    ``return``, ``raise``, ``yield``, or a ``break``/``continue`` of an enclosing loop."""
    if any(isinstance(n, (cst.Return, cst.Raise, cst.Yield)) for n in _walk(node)):
        return True
    # a loop's own break and continue stay inside it; those of its ``else`` do not
    outer = [node.orelse] if isinstance(node, _LOOPS) and node.orelse else []
    if not isinstance(node, _LOOPS):
        outer = [node]
    return any(_jumps(part) for part in outer)


def continues(loop: cst.For | cst.While) -> bool:
    """Whether ``loop`` has a ``continue`` of its own (one that may skip the rest of its body)."""
    return any(
        isinstance(n, cst.Continue)
        for stmt in loop.body.body
        if not isinstance(stmt, _LOOPS)
        for n in _walk(stmt, into_loops=False)
    )


def _jumps(node: cst.CSTNode) -> bool:
    """A ``break`` or ``continue`` under ``node`` that is not inside a loop under ``node``."""
    return any(isinstance(n, (cst.Break, cst.Continue)) for n in _walk(node, into_loops=False))


def defines(node: cst.CSTNode) -> bool:
    """Whether ``node`` defines functions or classes, imports, or declares scopes: statements a
    move must never reorder."""
    kinds = (*_SCOPES, cst.Import, cst.ImportFrom, cst.Global, cst.Nonlocal)
    return isinstance(node, kinds) or any(isinstance(n, kinds) for n in _walk(node))


# -- names -----------------------------------------------------------------------------------


def reads(node: cst.CSTNode) -> set[str]:
    """Every name and attribute chain under ``node`` (targets included: an over-estimate);
    not the attribute part of ``a.b`` alone, nor keyword names of calls."""
    found = set()
    labels: set[int] = set()  # names that label something and refer to no variable
    for n in _walk(node):
        if isinstance(n, cst.Attribute):
            labels.add(id(n.attr))
        elif isinstance(n, cst.Arg) and n.keyword is not None:
            labels.add(id(n.keyword))
        if isinstance(n, (cst.Name, cst.Attribute)) and id(n) not in labels:
            name = dotted(n)
            if name is not None:
                found.add(name)
    return found


def writes(node: cst.CSTNode) -> set[str]:
    """The names and attribute chains that statements under ``node`` assign or delete."""
    found: set[str] = set()
    for n in _walk(node):
        if isinstance(n, cst.Assign):
            for target in n.targets:
                found |= _targets(target.target)
        elif isinstance(n, (cst.AugAssign, cst.AnnAssign)):
            found |= _targets(n.target)
        elif isinstance(n, (cst.For, cst.CompFor)):
            found |= _targets(n.target)
        elif isinstance(n, cst.AsName):
            found |= _targets(n.name)
        elif isinstance(n, cst.NamedExpr):
            found |= _targets(n.target)
        elif isinstance(n, cst.Del):
            found |= _targets(n.target)
    return found


def _targets(target: cst.CSTNode) -> set[str]:
    name = dotted(target) if isinstance(target, cst.BaseExpression) else None
    if name is not None:
        return {name}
    if isinstance(target, (cst.Tuple, cst.List)):
        return set().union(*(_targets(element.value) for element in target.elements))
    if isinstance(target, cst.StarredElement):
        return _targets(target.value)
    if isinstance(target, (cst.Subscript, cst.Attribute)):
        return _targets(target.value)  # item or attribute assignment changes the object
    return set()


def clash(written: Iterable[str], read: Iterable[str]) -> bool:
    """Whether writing ``written`` may change what ``read`` sees: the same chain, or one
    inside the other (``model`` and ``model.fc``)."""
    read = set(read)
    for w in written:
        for r in read:
            if r == w or r.startswith(w + ".") or w.startswith(r + "."):
                return True
    return False
