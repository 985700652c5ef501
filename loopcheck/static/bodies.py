"""What a function's own text says about its values, read once per function (what it returns
is :func:`syntax.returns_of`): the values added or put into a name (``x += v``,
``parts.append(v)``), the values assigned under ``no_grad``, its block layout, and whether a
module's ``forward`` runs without grad."""

from __future__ import annotations

import libcst as cst

from loopcheck.static.classes import ClassInfo
from loopcheck.static.frames import Frame, module_frame
from loopcheck.static.index import FileContext
from loopcheck.static.reaching import Layout
from loopcheck.static.syntax import decorators, dotted, turns_grad_off
from loopcheck.static.tree import is_expression, kids


def named_function(frame: Frame, name: str) -> cst.FunctionDef | None:
    """The function of this file a call names: one defined inside this frame's function or
    one around it (a closure), else one of the module."""
    current: Frame | None = frame
    while current is not None:
        node = current.local_defs.get(name)
        if node is not None:
            return node
        current = current.parent
    return frame.ctx.functions.get(name)


def enclosing_frame(frame: Frame, node: cst.FunctionDef, ctx: FileContext | None = None) -> Frame:
    """The frame a function is read in: the one (this or around it) that defines it locally,
    whose names it sees, else the module's of its file (``ctx``, by default this frame's)."""
    current: Frame | None = frame
    while current is not None:
        if node in current.local_defs.values():
            return current
        current = current.parent
    return module_frame(ctx or frame.ctx)


def function_layout(frame: Frame) -> Layout:
    """The block layout of the function a frame runs (cached per file)."""
    scope = frame.func if frame.func is not None else frame.ctx.module
    return frame.ctx.remember("layout", frame.func, lambda: Layout(scope))


def augmented_values(frame: Frame) -> dict[str, list[cst.BaseExpression]]:
    return _function_facts(frame)[0]


def no_grad_values(frame: Frame) -> set[int]:
    return _function_facts(frame)[1]


def appended_values(frame: Frame) -> dict[str, list[cst.BaseExpression]]:
    return _function_facts(frame)[2]


_Values = dict[str, list[cst.BaseExpression]]
# the methods that put a value into a container (``parts.append(torch.tanh(x))``)
_PUTS = {"append", "extend", "insert", "appendleft", "add"}


def _function_facts(frame: Frame) -> tuple[_Values, set[int], _Values]:
    """``x += value`` values by name, the ids of values assigned under ``no_grad``, and the
    values put into a container by name (its ``append``, ``extend``, ``insert``)."""
    return frame.ctx.remember("dataflow", frame.func, lambda: _facts_of(frame))


def _facts_of(frame: Frame) -> tuple[_Values, set[int], _Values]:
    body = frame.func.body if frame.func is not None else frame.ctx.module
    augmented: _Values = {}
    appended: _Values = {}
    cut: set[int] = set()
    stack: list[tuple[cst.CSTNode, bool]] = [(body, False)]
    while stack:
        node, no_grad = stack.pop()
        if type(node) in (cst.FunctionDef, cst.ClassDef, cst.Lambda) and node is not body:
            continue
        if type(node) is cst.With:
            inner = no_grad or any(_disables_grad(item.item) for item in node.items)
            stack.append((node.body, inner))
            continue
        if type(node) is cst.AugAssign and type(node.target) is cst.Name:
            augmented.setdefault(node.target.value, []).append(node.value)
            if no_grad:
                cut.add(id(node.value))
        elif type(node) in (cst.Assign, cst.AnnAssign) and node.value is not None:
            if no_grad:
                cut.add(id(node.value))
        elif type(node) is cst.Expr and not no_grad:
            call = node.value
            if (
                type(call) is cst.Call
                and type(call.func) is cst.Attribute
                and type(call.func.value) is cst.Name
                and call.func.attr.value in _PUTS
                and call.args
            ):
                appended.setdefault(call.func.value.value, []).append(call.args[-1].value)
        if not is_expression(node):
            stack.extend((c, no_grad) for c in kids(node))
    return augmented, cut, appended


def forward_without_grad(cls: ClassInfo) -> bool:
    """Whether a module class of the linted files runs its whole ``forward`` with gradients
    off (decorated with ``torch.no_grad()``, or its body one ``with torch.inference_mode():``):
    a frozen feature extractor, whose outputs carry no graph back to it."""
    found = cls.method("forward")
    if found is None:
        return False
    node = found[1]
    if any(turns_grad_off(name) for name in decorators(node)):
        return True
    body = node.body.body if type(node.body) is cst.IndentedBlock else ()
    statements = [
        stmt
        for stmt in body
        if not (
            type(stmt) is cst.SimpleStatementLine
            and all(type(s) is cst.Expr and type(s.value) is cst.SimpleString for s in stmt.body)
        )
    ]
    guarded = [stmt for stmt in statements if type(stmt) is cst.With]
    rest = [stmt for stmt in statements if type(stmt) is not cst.With]
    return (
        bool(guarded)
        and all(any(_disables_grad(item.item) for item in stmt.items) for stmt in guarded)
        and all(_returns_a_name(stmt) for stmt in rest)
    )


def _returns_a_name(stmt: cst.CSTNode) -> bool:
    """``return features``: a line that hands back what the guarded block computed."""
    return (
        type(stmt) is cst.SimpleStatementLine
        and len(stmt.body) == 1
        and type(stmt.body[0]) is cst.Return
        and type(stmt.body[0].value) is cst.Name
    )


def _disables_grad(item: cst.BaseExpression) -> bool:
    if type(item) is cst.Call:
        name = dotted(item.func) or ""
        last = name.rsplit(".", 1)[-1]
        if last == "set_grad_enabled":
            return bool(item.args) and dotted(item.args[0].value) == "False"
        return turns_grad_off(last)
    return turns_grad_off(dotted(item) or "")
