"""Where a loss comes from: the models whose forward a tensor depends on, followed back through
assignments and calls (``.detach()``, ``.item()`` and ``torch.no_grad()`` cut the chain)."""

from __future__ import annotations

from dataclasses import dataclass

import libcst as cst

from loopcheck.static.frames import Frame
from loopcheck.static.reaching import Definition, Layout, Statement
from loopcheck.static.roles import Obj, Role
from loopcheck.static.syntax import dotted
from loopcheck.static.tree import is_expression, kids

_MODEL_ROLES = (Role.MODEL, Role.LIGHTNING, Role.ENGINE)
# Methods and attributes whose result carries no graph back to the models.
_CUT_METHODS = {"detach", "detach_", "item", "tolist", "numpy", "size", "dim", "numel", "shape"}
_CUT_ATTRIBUTES = {"data", "grad", "shape", "dtype", "device", "requires_grad", "ndim"}
_MAX_DEPTH = 12


@dataclass(frozen=True)
class Origin:
    """The models a tensor depends on; ``complete`` is False when part of the chain could not
    be traced (an unknown callable without model arguments, a parameter of the function)."""

    models: frozenset[str]
    complete: bool

    def __or__(self, other: Origin) -> Origin:
        return Origin(self.models | other.models, self.complete and other.complete)


NOTHING = Origin(frozenset(), True)
UNKNOWN = Origin(frozenset(), False)


def origin(frame: Frame, expr: cst.BaseExpression, at: Statement | None = None) -> Origin:
    """The models the tensor ``expr`` depends on, as seen from ``frame`` at the statement
    ``at`` (None: anywhere in the function). Cached per frame: loops run their body again."""
    cache = frame.origins
    key = (id(expr), id(at))
    found = cache.get(key)
    if found is None:
        found = cache[key] = _Tracer(frame).expr(expr, 0, at)
    return found


class _Tracer:
    def __init__(self, frame: Frame) -> None:
        self.frame = frame
        self.names: dict[tuple[int, str, int], Origin] = {}

    def expr(self, node: cst.BaseExpression, depth: int, at: Statement | None = None) -> Origin:
        if depth > _MAX_DEPTH:
            return UNKNOWN
        if isinstance(node, cst.Name):
            return self.name(self.frame, node.value, depth, at)
        if isinstance(node, cst.Attribute):
            if node.attr.value in _CUT_ATTRIBUTES:
                return NOTHING
            obj = self.frame.resolve(node)
            if obj is not None:
                return self.obj(obj)
            return self.expr(node.value, depth + 1, at)
        if isinstance(node, cst.Call):
            return self.call(node, depth, at)
        if isinstance(node, cst.Subscript):
            return self.expr(node.value, depth + 1, at)
        if isinstance(node, (cst.Lambda, cst.SimpleString, cst.Integer, cst.Float)):
            return NOTHING
        out = NOTHING
        for child in _expressions(node):
            out = out | self.expr(child, depth + 1, at)
        return out

    def obj(self, obj: Obj) -> Origin:
        if obj.role in _MODEL_ROLES:
            return Origin(frozenset({obj.key}), True)
        return NOTHING

    def name(self, frame: Frame, name: str, depth: int, at: Statement | None) -> Origin:
        key = (id(frame), name, id(at))
        if key in self.names:
            return self.names[key]
        self.names[key] = NOTHING  # a name defined from itself adds nothing new
        found = self._name(frame, name, depth, at)
        self.names[key] = found
        return found

    def _name(self, frame: Frame, name: str, depth: int, at: Statement | None) -> Origin:
        if name in frame.bound:
            obj = frame.bound[name]
            return self.obj(obj) if obj is not None else UNKNOWN
        if at is not None and frame is self.frame:
            defs = _layout(frame).reaching(name, at)
            if defs is not None:
                return self.definitions(frame, name, defs, depth)
        elif frame.local_values.get(name) or frame.tuple_values.get(name):
            values = [
                *frame.local_values.get(name, []),
                *(v for _, v in frame.tuple_values.get(name, [])),
            ]
            defs = [Definition(v, v) for v in values]
            defs += [Definition(v, v, True) for v in _augmented(frame).get(name, [])]
            return self.definitions(frame, name, defs, depth)
        obj = frame.resolve_name(name)
        if obj is not None:
            return self.obj(obj)
        if name in frame.loop_targets and at is None:
            return self.expr(frame.loop_targets[name], depth + 1)
        if name in frame.params:
            return UNKNOWN
        if frame.parent is not None:
            return self.name(frame.parent, name, depth + 1, None)
        return NOTHING

    def definitions(self, frame: Frame, name: str, defs: list[Definition], depth: int) -> Origin:
        """What the assignments of a name carry (``generator_out = G(z)``: what it was
        assigned, not what it is called)."""
        cut = _no_grad_values(frame)
        out = NOTHING
        for d in defs:
            if id(d.value) in cut:
                continue
            at = d.statement if frame is self.frame else None
            if not d.augmented and not d.loop_target and isinstance(d.value, cst.Call):
                built = frame.value_role(d.value, name)
                if built is not None and built.role in _MODEL_ROLES:
                    out = out | self.obj(built)
                    continue
            out = out | self.expr(d.value, depth + 1, at)
        return out

    def call(self, call: cst.Call, depth: int, at: Statement | None) -> Origin:
        func = call.func
        args = NOTHING
        for arg in call.args:
            args = args | self.expr(arg.value, depth + 1, at)
        if isinstance(func, cst.Attribute):
            method = func.attr.value
            if method in _CUT_METHODS:
                return NOTHING
            receiver = self.frame.resolve(func.value)
            if receiver is not None:
                if receiver.role in _MODEL_ROLES:
                    return self.obj(receiver) | args
                if receiver.role is Role.INSTANCE and receiver.cls is not None:
                    if receiver.cls.method(method) is not None:
                        return self.instance_models(receiver) | args
                    key = self.frame.module_key(func)  # ``self.qf1(obs)``: a module attribute
                    return (Origin(frozenset({key}), True) if key else UNKNOWN) | args
                return args  # ``scaler.scale(loss)``, ``accelerator.gather(loss)``
            callee = self.frame.resolve(func)
            if callee is not None and callee.role in _MODEL_ROLES:
                return self.obj(callee) | args
            return self.expr(func.value, depth + 1, at) | args
        if isinstance(func, cst.Name):
            callee = self.frame.resolve_name(func.value)
            if callee is not None and callee.role in _MODEL_ROLES:
                return self.obj(callee) | args
            if callee is not None and callee.role is Role.INSTANCE and callee.cls is not None:
                return self.instance_models(callee) | args
            if func.value in self.frame.local_defs or func.value in self.frame.ctx.functions:
                # a helper of this file: what it returns depends on its arguments, and on
                # whatever models it reaches by itself
                return args if args.models else Origin(args.models, False)
            key = self.frame.module_key(func) if callee is None else None
            if key is not None:
                return Origin(frozenset({key}), True) | args  # ``critic = Critic(); critic(x)``
            return args
        return args | UNKNOWN

    def instance_models(self, obj: Obj) -> Origin:
        """The models an instance of a linted class holds (a trainer's ``self.model``)."""
        cls = obj.cls
        assert cls is not None
        keys: set[str] = set()
        for info in cls.mro():
            for attr in info.attr_values:
                found = self.frame.attribute(cls, attr)
                if found is not None and found.role in _MODEL_ROLES:
                    keys.add(found.key)
        return Origin(frozenset(keys), bool(keys))


def _expressions(node: cst.CSTNode) -> list[cst.BaseExpression]:
    """The expressions directly inside a compound expression (operands, elements, arguments)."""
    out: list[cst.BaseExpression] = []
    stack = list(kids(node))
    while stack:
        child = stack.pop()
        if is_expression(child):
            out.append(child)  # type: ignore[arg-type]
        else:
            stack.extend(kids(child))
    return out


def _layout(frame: Frame) -> Layout:
    cache = getattr(frame.ctx, "_layouts", None)
    if cache is None:
        cache = {}
        frame.ctx._layouts = cache  # type: ignore[attr-defined]
    key = id(frame.func)
    if key not in cache:
        cache[key] = Layout(frame.func if frame.func is not None else frame.ctx.module)
    return cache[key]


def _augmented(frame: Frame) -> dict[str, list[cst.BaseExpression]]:
    return _function_facts(frame)[0]


def _no_grad_values(frame: Frame) -> set[int]:
    return _function_facts(frame)[1]


def _function_facts(frame: Frame) -> tuple[dict[str, list[cst.BaseExpression]], set[int]]:
    """``x += value`` values by name, and the ids of values assigned under ``no_grad``."""
    cache = getattr(frame.ctx, "_dataflow_facts", None)
    if cache is None:
        cache = {}
        frame.ctx._dataflow_facts = cache  # type: ignore[attr-defined]
    key = id(frame.func)
    if key in cache:
        return cache[key]
    body = frame.func.body if frame.func is not None else frame.ctx.module
    augmented: dict[str, list[cst.BaseExpression]] = {}
    cut: set[int] = set()
    stack: list[tuple[cst.CSTNode, bool]] = [(body, False)]
    while stack:
        node, no_grad = stack.pop()
        if isinstance(node, (cst.FunctionDef, cst.ClassDef, cst.Lambda)) and node is not body:
            continue
        if isinstance(node, cst.With):
            inner = no_grad or any(_disables_grad(item.item) for item in node.items)
            stack.append((node.body, inner))
            continue
        if isinstance(node, cst.AugAssign) and isinstance(node.target, cst.Name):
            augmented.setdefault(node.target.value, []).append(node.value)
            if no_grad:
                cut.add(id(node.value))
        elif isinstance(node, (cst.Assign, cst.AnnAssign)) and node.value is not None:
            if no_grad:
                cut.add(id(node.value))
        if not is_expression(node):
            stack.extend((c, no_grad) for c in kids(node))
    cache[key] = (augmented, cut)
    return augmented, cut


def _disables_grad(item: cst.BaseExpression) -> bool:
    if isinstance(item, cst.Call):
        name = dotted(item.func) or ""
        last = name.rsplit(".", 1)[-1]
        if last == "set_grad_enabled":
            return bool(item.args) and dotted(item.args[0].value) == "False"
        return last in {"no_grad", "inference_mode"}
    name = dotted(item) or ""
    return name.rsplit(".", 1)[-1] in {"no_grad", "inference_mode"}
