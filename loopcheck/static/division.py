"""Whether a loss is divided by the number of micro-batches (or a token or sample count)
before its backward: through assignments, helpers of the linted files, and the losses a caller
hands in (LC201)."""

from __future__ import annotations

import re

import libcst as cst

from loopcheck.static.bodies import enclosing_frame, function_layout, named_function
from loopcheck.static.dataflow import MAX_DEPTH, MODEL_ROLES
from loopcheck.static.frames import Frame, module_frame
from loopcheck.static.reaching import Definition, Statement
from loopcheck.static.roles import Role
from loopcheck.static.syntax import dotted, returns_of
from loopcheck.static.unpacking import tuple_element, tuple_place

_RESULT_METHODS = {"mean", "sum", "float", "double", "half", "bfloat16", "to", "cuda", "clone"}


def divided(frame: Frame, expr: cst.BaseExpression, at: Statement | None = None) -> bool | None:
    """Whether the loss ``expr`` was divided on its way to ``backward()``: True when a
    division (or a multiplication by a reciprocal) reaches it, False when it is traced back to
    a fresh loss (a model's output, a criterion) with none, None when part of it is unknown (a
    helper of another library, a parameter, a factor of unknown value)."""
    return _Division(frame).expr(expr, at, 0)


def divided_where(
    frame: Frame, expr: cst.BaseExpression, at: Statement | None = None
) -> tuple[bool | None, bool]:
    """:func:`divided`, and whether the verdict is about a loss the caller handed in (a
    parameter of a followed helper: see ``Follow.divided``)."""
    division = _Division(frame)
    return division.expr(expr, at, 0), division.handed


class _Division:
    def __init__(self, frame: Frame, helpers: int = 0) -> None:
        self.frame = frame
        self.seen: set[tuple[str, int]] = set()
        self.handed = False  # a verdict came from the caller's loss
        self.helpers = helpers  # helpers read inside one another (a recursion is cut)

    def expr(self, node: cst.BaseExpression, at: Statement | None, depth: int) -> bool | None:
        if depth > MAX_DEPTH:
            return None
        if type(node) is cst.BinaryOperation:
            op = node.operator
            if type(op) is cst.Divide:
                return True
            if type(op) is cst.Multiply:
                if _reciprocal(node.left) or _reciprocal(node.right):
                    return True
                left, right = (self.expr(n, at, depth + 1) for n in (node.left, node.right))
                if left or right:
                    return True
                if left is False and self.counts(node.right, at, depth + 1):
                    return False
                if right is False and self.counts(node.left, at, depth + 1):
                    return False
                return None
            if type(op) in (cst.Add, cst.Subtract):
                return _both(
                    self.expr(node.left, at, depth + 1), self.expr(node.right, at, depth + 1)
                )
            return None
        if type(node) is cst.UnaryOperation:
            return self.expr(node.expression, at, depth + 1)
        if type(node) is cst.Name:
            return self.name(node.value, at, depth)
        if type(node) in (cst.Subscript, cst.Attribute):
            return self.expr(node.value, at, depth + 1)
        if type(node) is cst.Call:
            return self.call(node, at, depth)
        return None

    def counts(self, node: cst.BaseExpression, at: Statement | None, depth: int) -> bool:
        """Whether a factor is a whole number or a count (``loss * 2``, ``loss * n_tokens``,
        ``loss_factor = num_tokens if sum_loss else 1.0``): it scales, it does not normalise."""
        if depth > MAX_DEPTH:
            return False
        if type(node) is cst.Integer or (type(node) is cst.Float and node.value in ("1.0", "1.")):
            return True
        if type(node) is cst.IfExp:
            return self.counts(node.body, at, depth + 1) and self.counts(node.orelse, at, depth + 1)
        name = dotted(node)
        if name is None:
            return False
        if _COUNT.search(name.rsplit(".", 1)[-1]):
            return True
        if type(node) is not cst.Name:
            return False
        defs = function_layout(self.frame).reaching(name, at) if at is not None else None
        values = [d.value for d in defs] if defs else self.frame.local_values.get(name, [])
        return bool(values) and all(
            v is not None and self.counts(v, None, depth + 1) for v in values
        )

    def torch_loss_module(self, name: str) -> bool:
        """Whether every value of a local is a loss module of ``torch.nn`` that averages
        (``CrossEntropyLoss()``, not ``MSELoss(reduction="sum")``)."""
        values = self.frame.local_values.get(name) or []
        imports = self.frame.ctx.imports
        return bool(values) and all(
            type(v) is cst.Call
            and type(v.func) in (cst.Name, cst.Attribute)
            and (qual := imports.qualify(v.func)) is not None
            and qual.startswith("torch.nn.")
            and qual.endswith("Loss")
            and not any(
                a.keyword is not None
                and a.keyword.value == "reduction"
                and not (type(a.value) is cst.SimpleString and "mean" in a.value.value)
                for a in v.args
            )
            for v in values
        )

    def built_from_model(self, name: str) -> bool:
        """Whether every value of a local is a call handed a model (``ComputeLoss(model)``)."""
        values = self.frame.local_values.get(name) or []
        return bool(values) and all(
            type(v) is cst.Call
            and any(
                (held := self.frame.resolve(arg.value)) is not None and held.role in MODEL_ROLES
                for arg in v.args
                if type(arg.value) in (cst.Name, cst.Attribute)
            )
            for v in values
        )

    def name(self, name: str, at: Statement | None, depth: int) -> bool | None:
        key = (name, id(at))
        if key in self.seen:
            return None
        self.seen.add(key)
        frame = self.frame
        defs = function_layout(frame).reaching(name, at) if at is not None else None
        if defs is None:
            values = frame.local_values.get(name)
            if not values:
                # a parameter: what the caller divided, when it handed a loss in; else unknown
                if name in frame.divided:
                    self.handed = True
                return frame.divided.get(name)
            defs = [Definition(v, v) for v in values]
        plain = [d for d in defs if not d.augmented and not d.loop_target]
        for d in defs:
            if d.augmented and d.operator is cst.DivideAssign:
                return True  # ``loss /= accum``
            if d.augmented and d.operator is cst.MultiplyAssign and _reciprocal(d.value):
                return True
        if not plain:
            return None
        results = [self.definition(name, d, depth) for d in plain]
        if any(results):
            # divided on some path (``if accum > 1: loss = loss / accum``): the division is
            # the author's, conditional on purpose, as ``loss /= accum`` under an ``if`` is
            return True
        return None if None in results else False

    def returned(
        self, frame: Frame, node: cst.FunctionDef, depth: int, index: int | None = None
    ) -> bool | None:
        return _returned(frame, node, depth, index, self.helpers + 1)

    def helper(self, func: cst.BaseExpression | None) -> cst.FunctionDef | None:
        """The function of this file a call runs by name (a nested one included)."""
        if type(func) is not cst.Name:
            return None
        return named_function(self.frame, func.value)

    def definition(self, name: str, d: Definition, depth: int) -> bool | None:
        """What one assignment of ``name`` says; ``error, acc = fast_adapt(...)`` reads the
        element of what the helper returns that lands in ``name``."""
        value = d.value
        index = tuple_place(self.frame, name, value)
        func = value.func if type(value) is cst.Call else None
        node = self.helper(func) if index is not None else None
        if node is not None and returns_of(node):
            return self.returned(_callee_frame(self.frame, node), node, depth, index)
        return self.expr(value, d.statement, depth + 1)

    def call(self, call: cst.Call, at: Statement | None, depth: int) -> bool | None:
        func = call.func
        if type(func) is cst.Attribute:
            method = func.attr.value
            receiver = self.frame.resolve(func.value)
            if method == "scale" and receiver is not None and receiver.role is Role.SCALER:
                return self.expr(call.args[0].value, at, depth + 1) if call.args else None
            if method == "scale_loss" and receiver is None and call.args:
                # apex's ``with amp.scale_loss(loss, optimizer) as scaled_loss:``
                return self.expr(call.args[0].value, at, depth + 1)
            if method in _RESULT_METHODS and receiver is None:
                return self.expr(func.value, at, depth + 1)
        node = self.helper(func)
        if node is not None and returns_of(node):  # a helper of this file: what it returns
            return self.returned(_callee_frame(self.frame, node), node, depth)
        if type(func) is cst.Attribute:
            owner = self.frame.resolve(func.value)
            found = owner.cls.method(func.attr.value) if owner and owner.cls else None
            if found is not None and owner is not None and returns_of(found[1]):
                # a method of the linted files (``self._loss_step(batch)``): what it returns
                info, method = found
                frame = Frame(info.ctx, method, info, {"self": owner}, module_frame(info.ctx), "")
                return self.returned(frame, method, depth)
        held = self.frame.resolve(func) if type(func) in (cst.Name, cst.Attribute) else None
        if held is not None and held.role in MODEL_ROLES:
            return False  # a model's output (``outputs.loss``): a fresh loss
        called = held.cls.method("__call__") if held is not None and held.cls else None
        if called is not None and held is not None:
            # an instance of a loss class of the linted files (``compute_loss = ComputeLoss(
            # model)``): what its ``__call__`` returns (``loss * bs``, a sum, is not fresh)
            owner, node = called
            frame = Frame(owner.ctx, node, owner, {"self": held}, module_frame(owner.ctx), "")
            return self.returned(frame, node, depth) if returns_of(node) else None
        qual = (
            self.frame.ctx.imports.qualify(func)
            if type(func) in (cst.Name, cst.Attribute)
            else None
        )
        if qual is not None and qual.startswith(("torch.", "F.")):
            return False  # ``F.cross_entropy(...)``: a fresh loss
        if type(func) is cst.Name and self.torch_loss_module(func.value):
            return False  # ``loss_fct = CrossEntropyLoss()``: a mean
        name = (qual or "").rsplit(".", 1)[-1]
        if _LOSS_CALLABLE.search(name):
            if type(func) is cst.Name and self.built_from_model(func.value):
                # ``compute_loss = ComputeLoss(model)`` of another package (YOLO): a loss
                # object built from the model may weigh by the batch; its scale is unknown
                return None
            if _handed_count(call):
                # ``self.loss_fn(pred, labels, global_valid_tokens)``: normalised inside by
                # the count it is handed (torchtitan, Hugging Face's ``num_items_in_batch``)
                return True
            return False  # ``criterion(out, y)``, ``self.loss_fn(...)``
        return None


_LOSS_CALLABLE = re.compile(
    r"(?i)(loss|criterion|crit)(_?fn|_?func|_?fct)?$|cross_?entropy$|^(model|net|forward)$"
)
# An argument that counts what the loss is normalised by.
_COUNT = re.compile(r"(?i)(tokens|num_items|items_in_batch|normali[sz]|denom)")
# (a normaliser handed to a loss function, or a count a loss is multiplied by)


def _handed_count(call: cst.Call) -> bool:
    for arg in call.args:
        if arg.keyword is not None and _COUNT.search(arg.keyword.value):
            return True
        if _COUNT.search(dotted(arg.value) or ""):
            return True
    return False


def _returned(
    frame: Frame, node: cst.FunctionDef, depth: int, index: int | None, helpers: int
) -> bool | None:
    """Whether every value a function returns is divided (see :func:`divided`); with
    ``index``, the element at that place of the tuples it returns."""
    if helpers > _MAX_HELPERS:
        return None
    verdict: bool | None = True
    for stmt, value in returns_of(node):
        if index is not None:
            element = tuple_element(value, index)
            if element is None:
                return None
            value = element
        verdict = _both(verdict, _Division(frame, helpers).expr(value, stmt, depth + 1))
    return verdict


_MAX_HELPERS = 3  # helpers read inside one another


def _callee_frame(frame: Frame, node: cst.FunctionDef) -> Frame:
    parent = enclosing_frame(frame, node)
    return Frame(frame.ctx, node, None, {}, parent, node.name.value)


def _both(a: bool | None, b: bool | None) -> bool | None:
    if a is False or b is False:
        return False
    if a and b:
        return True
    return None


def _reciprocal(node: cst.BaseExpression) -> bool:
    """``1 / n``, ``1.0 / accum``, or a literal factor below one (``0.25``)."""
    if type(node) is cst.BinaryOperation and type(node.operator) is cst.Divide:
        return type(node.left) in (cst.Integer, cst.Float)
    if type(node) is cst.Float:
        try:
            return 0 < float(node.value) < 1
        except ValueError:
            return False
    return False
