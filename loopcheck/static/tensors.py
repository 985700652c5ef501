"""What a training loop does with tensors besides the five moves: losses summed or collected
across iterations with their graph (LC501), and which functions evaluate a model (LC502)."""

from __future__ import annotations

import re

import libcst as cst

from loopcheck.static.dataflow import function_layout, origin
from loopcheck.static.frames import Frame
from loopcheck.static.index import EVALUATING as _EVALUATING
from loopcheck.static.index import FileContext
from loopcheck.static.ownership import constructor_of
from loopcheck.static.reaching import Statement
from loopcheck.static.roles import Role
from loopcheck.static.syntax import dotted, names_in
from loopcheck.static.tree import walk

_BACKWARD_CALLS = {"backward", "manual_backward"}


def kept_graph(
    frame: Frame, stmt: cst.CSTNode, at: Statement | None
) -> tuple[str, cst.CSTNode] | None:
    """``total += loss`` / ``total = total + loss`` / ``losses.append(loss)`` where the added
    tensor carries the graph of a model's forward: the accumulator's name and the node to flag."""
    added: cst.BaseExpression | None = None
    name: str | None = None
    if isinstance(stmt, cst.AugAssign) and isinstance(stmt.operator, cst.AddAssign):
        if isinstance(stmt.target, cst.Name):
            name, added = stmt.target.value, stmt.value
    elif isinstance(stmt, cst.Assign) and len(stmt.targets) == 1:
        target = stmt.targets[0].target
        value = stmt.value
        if (
            isinstance(target, cst.Name)
            and isinstance(value, cst.BinaryOperation)
            and isinstance(value.operator, cst.Add)
            and isinstance(value.left, cst.Name)
            and value.left.value == target.value
        ):
            name, added = target.value, value.right
    elif isinstance(stmt, cst.Expr) and isinstance(stmt.value, cst.Call):
        call = stmt.value
        func = call.func
        if (
            isinstance(func, cst.Attribute)
            and func.attr.value == "append"
            and isinstance(func.value, cst.Name)
            and len(call.args) == 1
        ):
            name, added = func.value.value, call.args[0].value
    if name is None or added is None:
        return None
    if not _initialised(frame, name):
        return None  # not an accumulator set up before the loop
    found = origin(frame, added, at)
    if not found.models or not found.complete:
        return None
    if not _surely_a_graph(frame, added, at, 0):
        return None  # through a helper we cannot see: it may return ``loss.item()``
    return name, stmt


_TENSOR_METHODS = {"mean", "sum", "float", "double", "half", "to", "cuda", "squeeze", "view"}


def _surely_a_graph(
    frame: Frame, expr: cst.BaseExpression, at: Statement | None, depth: int
) -> bool:
    """Whether ``expr`` is certainly a tensor computed by a model's forward with its graph:
    a model's output, a loss of torch or of a criterion built from ``torch.nn``, arithmetic on
    those. A call to anything else (a helper of another module) is not certain."""
    if depth > 12:
        return False
    if isinstance(expr, cst.BinaryOperation):
        return _surely_a_graph(frame, expr.left, at, depth + 1) or _surely_a_graph(
            frame, expr.right, at, depth + 1
        )
    if isinstance(expr, (cst.Subscript, cst.Attribute)):
        if isinstance(expr, cst.Attribute) and expr.attr.value in {"data", "grad"}:
            return False
        return _surely_a_graph(frame, expr.value, at, depth + 1)
    if isinstance(expr, cst.Name):
        if at is None:
            return False
        defs = function_layout(frame).reaching(expr.value, at)
        return bool(defs) and any(
            not d.loop_target and _surely_a_graph(frame, d.value, d.statement, depth + 1)
            for d in defs
        )
    if not isinstance(expr, cst.Call):
        return False
    func = expr.func
    held = frame.resolve(func) if isinstance(func, (cst.Name, cst.Attribute)) else None
    if held is not None and held.role in (Role.MODEL, Role.LIGHTNING, Role.ENGINE):
        return True
    if isinstance(func, cst.Attribute) and func.attr.value in _TENSOR_METHODS:
        return _surely_a_graph(frame, func.value, at, depth + 1)
    qual = frame.ctx.imports.qualify(func) if isinstance(func, (cst.Name, cst.Attribute)) else None
    if qual is not None and qual.startswith(("torch.nn.functional.", "torch.")):
        return any(_surely_a_graph(frame, a.value, at, depth + 1) for a in expr.args)
    built = constructor_of(frame, func) if isinstance(func, (cst.Name, cst.Attribute)) else None
    maker = frame.ctx.imports.qualify(built.func) or "" if built is not None else ""
    loss_like = (maker.startswith("torch.nn.") and maker.endswith("Loss")) or bool(
        _LOSS_NAME.search((qual or "").rsplit(".", 1)[-1])
    )
    if loss_like:  # ``criterion(model(x), y)``: a loss of a model's output
        return any(_surely_a_graph(frame, a.value, at, depth + 1) for a in expr.args)
    return False


_LOSS_NAME = re.compile(r"(?i)^(criterion|crit|loss_?fn|loss_?func|compute_loss|\w*_loss|loss)$")


def _initialised(frame: Frame, name: str) -> bool:
    """An accumulator starts as a number or an empty list before the loop."""
    for value in frame.local_values.get(name, ()):
        if isinstance(value, (cst.Integer, cst.Float)) or (
            isinstance(value, cst.List) and not value.elements
        ):
            return True
    return False


def backpropagated(ctx: FileContext, func: cst.FunctionDef | None) -> frozenset[str]:
    """Names whose value reaches a ``backward()`` in a function: the receivers and arguments of
    backward calls, and the names assigned into them (``loss = total / n``)."""
    cache = ctx.backprop_cache
    key = id(func)
    if key in cache:
        return cache[key]
    body = func.body if func is not None else ctx.module
    names: set[str] = set()
    assigned: dict[str, set[str]] = {}
    for node in walk(body):
        if isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute):
            if node.func.attr.value in _BACKWARD_CALLS:
                names |= names_in(node.func.value)
                for arg in node.args:
                    names |= names_in(arg.value)
        elif isinstance(node, cst.Assign):
            for target in node.targets:
                if isinstance(target.target, cst.Name):
                    assigned.setdefault(target.target.value, set()).update(names_in(node.value))
        elif isinstance(node, cst.AugAssign) and isinstance(node.target, cst.Name):
            assigned.setdefault(node.target.value, set()).update(names_in(node.value))
    changed = True
    while changed:
        changed = False
        for target, sources in assigned.items():
            if target in names and not sources <= names:
                names |= sources
                changed = True
    cache[key] = frozenset(names)
    return cache[key]


def evaluates(ctx: FileContext, func: cst.FunctionDef | None) -> bool:
    """A function that evaluates a model: named so (``validate``, ``evaluate``, ``test``), or
    putting a model in eval mode (``model.eval()``)."""
    if func is None or func.name.value.startswith("test_"):
        return False  # a unit test (memory is no concern there)
    cache = ctx.evaluates_cache
    key = id(func)
    if key not in cache:
        cache[key] = bool(_EVALUATING.search(func.name.value)) or any(
            isinstance(node, cst.Call)
            and isinstance(node.func, cst.Attribute)
            and node.func.attr.value == "eval"
            and not node.args
            and dotted(node.func.value) is not None
            for node in walk(func.body)
        )
    return cache[key]


_GRAD_SWITCHES = {"no_grad", "inference_mode", "set_grad_enabled", "requires_grad_"}


def switches_gradients(ctx: FileContext, func: cst.FunctionDef | None) -> bool:
    """A function that turns gradients off by other means than a ``with`` block or decorator
    around its loop (``torch.set_grad_enabled(False)`` as a statement, an ExitStack context,
    ``model.requires_grad_(False)``): its forwards are not judged for LC502."""
    if func is None:
        return False
    cache = ctx.switches_cache
    key = id(func)
    if key not in cache:
        cache[key] = any(
            isinstance(node, cst.Attribute)
            and node.attr.value in _GRAD_SWITCHES
            or isinstance(node, cst.Name)
            and node.value in _GRAD_SWITCHES
            for node in walk(func.body)
        )
    return cache[key]
