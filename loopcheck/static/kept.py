"""Losses summed or collected across iterations with their graph (LC501): what a statement
adds to which accumulator, and whether what it adds is surely a tensor carrying a model's
graph (a model's output, a loss built from one, the very tensor a backward was given)."""

from __future__ import annotations

import re

import libcst as cst

from loopcheck.static.bodies import function_layout
from loopcheck.static.callees import BACKWARD_CALLS, given_arguments
from loopcheck.static.classes import ClassInfo, self_attribute
from loopcheck.static.dataflow import origin
from loopcheck.static.frames import Frame, module_frame
from loopcheck.static.index import FileContext
from loopcheck.static.ownership import constructor_of
from loopcheck.static.reaching import Statement
from loopcheck.static.roles import Role
from loopcheck.static.syntax import dotted, loop_assigned, names_in, returns_of
from loopcheck.static.tree import is_expression, walk
from loopcheck.static.unpacking import tuple_element, tuple_place


def kept_graph(
    frame: Frame, stmt: cst.CSTNode, at: Statement | None
) -> tuple[str, cst.CSTNode] | None:
    """``total += loss`` / ``total = total + loss`` / ``losses.append(loss)`` where the added
    tensor carries the graph of a model's forward: the accumulator's name and the node to flag."""
    shape = frame.ctx.remember("accumulates", stmt, lambda: _accumulation(stmt))
    if shape is None:
        return None
    target, added = shape
    if target is None:
        assert type(stmt) is cst.Expr and type(stmt.value) is cst.Call
        for name, value in _metered(frame, stmt.value):
            if _keeps_graph(frame, name, value, at):
                return name, stmt
        return None
    name = _accumulator(frame, target)
    if name is None:
        return None  # not an accumulator set up before the loop
    if not _keeps_graph(frame, name, added, at):
        return None
    return name, stmt


def _accumulation(
    stmt: cst.CSTNode,
) -> tuple[cst.BaseExpression | None, cst.BaseExpression] | None:
    """What a statement adds to what (its text alone, read once): ``(target, added)``;
    ``(None, call)`` for a method call that may feed a meter; None for anything else."""
    if type(stmt) is cst.AugAssign and type(stmt.operator) is cst.AddAssign:
        return stmt.target, stmt.value
    if type(stmt) is cst.Assign and len(stmt.targets) == 1:
        value = stmt.value
        if type(value) is not cst.BinaryOperation:
            return None
        name = dotted(stmt.targets[0].target)
        if type(value.operator) is cst.Add and dotted(value.left) is not None:
            if dotted(value.left) == name:
                return stmt.targets[0].target, value.right
        if name is not None and any(
            dotted(node) == name for node in walk(value) if is_expression(node)
        ):
            # a running mean of itself and the loss: ``tloss = (tloss * i + loss) / (i + 1)``
            return stmt.targets[0].target, value
        return None
    if type(stmt) is cst.Expr and type(stmt.value) is cst.Call:
        call = stmt.value
        func = call.func
        if type(func) is cst.Attribute and func.attr.value == "append" and len(call.args) == 1:
            return func.value, call.args[0].value
        if type(func) is cst.Attribute and call.args:
            return None, call
    return None


def _keeps_graph(frame: Frame, name: str, added: cst.BaseExpression, at: Statement | None) -> bool:
    """Whether what is added to the accumulator ``name`` is a loss with a model's graph."""
    if not names_a_loss(added) and not _LOSSES.search(name):
        return False  # outputs or features collected: an evaluation's business (LC502)
    if _given_to_backward(frame, added, at):
        return True  # what a backward was given has a graph, whatever made it
    # a model's graph reaches it (what else does need not be known: it is certainly a graph)
    if not origin(frame, added, at).models:
        return False
    # through a helper we cannot see, it may be ``loss.item()``
    return _surely_a_graph(frame, added, at, 0)


def _given_to_backward(frame: Frame, added: cst.BaseExpression, at: Statement | None) -> bool:
    """Whether ``added`` is a name whose value, as it reaches ``at``, is the very tensor a
    backward of the function was given (``loss.backward()``, ``scaler.scale(loss).backward()``,
    ``accelerator.backward(loss)``, ``(loss / n).backward()``): backward needs its graph, so it
    has one, however the linter fails to see the forward that made it."""
    if type(added) is not cst.Name or at is None:
        return False
    layout = function_layout(frame)
    here = layout.reaching(added.value, at)
    if not here:
        return False
    mine = {id(d.statement) for d in here}
    for stmt, tensor in _backward_tensors(frame.ctx, frame.func):
        if tensor == added.value:
            there = layout.reaching(tensor, stmt)
            if there and {id(d.statement) for d in there} == mine:
                return True
    return False


def reaches_a_backward(frame: Frame, name: str) -> bool:
    """Whether the value of ``name`` flows into what a backward of the function is given,
    through the definitions that reach that backward (``loss = total / n; loss.backward()``),
    not through a name reused later for something else (``loss = tr_loss / steps`` for the
    report, after the training loop)."""
    layout = function_layout(frame)
    seen: set[tuple[str, int]] = set()
    work = list(_backward_reads(frame.ctx, frame.func))
    while work:
        read, at = work.pop()
        if read == name:
            return True
        if (read, id(at)) in seen or len(seen) > 2_000:
            continue
        seen.add((read, id(at)))
        for d in layout.reaching(read, at) or ():
            work.extend((n, d.statement) for n in names_in(d.value))
    return False


def _backward_calls(
    ctx: FileContext, func: cst.FunctionDef | None
) -> list[tuple[Statement, cst.Call]]:
    """Each ``backward`` call of a function (``x.backward()``, ``accelerator.backward(x)``),
    with the statement holding it; read once per function."""

    def read() -> list[tuple[Statement, cst.Call]]:
        found = []
        for stmt in walk(func.body if func is not None else ctx.module):
            if type(stmt) is not cst.SimpleStatementLine:
                continue
            for node in walk(stmt):
                if type(node) is cst.Call and type(node.func) is cst.Attribute:
                    if node.func.attr.value in BACKWARD_CALLS:
                        found.append((stmt, node))
        return found

    return ctx.remember("backward calls", func, read)


def _backward_reads(ctx: FileContext, func: cst.FunctionDef | None) -> list[tuple[str, Statement]]:
    """The names each backward of a function reads (its receiver and arguments), with its
    statement."""
    found = []
    for stmt, call in _backward_calls(ctx, func):
        names = names_in(call.func.value)  # type: ignore[attr-defined]
        for arg in call.args:
            names |= names_in(arg.value)
        found.extend((n, stmt) for n in names)
    return found


def _backward_tensors(
    ctx: FileContext, func: cst.FunctionDef | None
) -> list[tuple[Statement, str]]:
    """Each statement of a function that runs a backward, with the name of the tensor it is
    given, as it is or scaled (``x.backward()``, ``s.scale(x).backward()``, ``(x / n)``)."""
    found = []
    for stmt, call in _backward_calls(ctx, func):
        for expr in [call.func.value, *(a.value for a in call.args[:1])]:  # type: ignore[attr-defined]
            name = _scaled_name(expr)
            if name is not None:
                found.append((stmt, name))
    return found


def _scaled_name(expr: cst.BaseExpression) -> str | None:
    """``x``, ``(x / n)``, ``x * w`` or ``scaler.scale(x)``: the name ``x``."""
    while True:
        if type(expr) is cst.Name:
            return expr.value
        if type(expr) is cst.BinaryOperation and type(expr.operator) in (cst.Divide, cst.Multiply):
            expr = expr.left
        elif (
            type(expr) is cst.Call
            and type(expr.func) is cst.Attribute
            and expr.func.attr.value == "scale"
            and len(expr.args) == 1
        ):
            expr = expr.args[0].value
        else:
            return None


def _metered(frame: Frame, call: cst.Call) -> list[tuple[str, cst.BaseExpression]]:
    """``losses.update(loss, n)`` on a meter, an instance of a class of the linted files whose
    method adds the argument to an attribute of its own (``self.sum += val * n``): the
    meter's name with each value so handed in."""
    func = call.func
    if type(func) is not cst.Attribute or not call.args:
        return []
    name = dotted(func.value)
    if not (name and _LOSSES.search(name)) and not any(names_a_loss(a.value) for a in call.args):
        return []  # (cheap first: what it sums must be named a loss, or the meter for one)
    meter = frame.resolve(func.value)
    if meter is None or meter.role is not Role.INSTANCE or meter.cls is None:
        return []
    found = meter.cls.method(func.attr.value)
    if found is None or name is None:
        return []
    method = found[1]
    params = [p.name.value for p in method.params.params][1:]  # after ``self``
    summed = found[0].ctx.remember("summed", method, lambda: _summed_parameters(method))
    handed = []
    for i, arg in enumerate(call.args):
        if arg.star:
            break
        param = arg.keyword.value if arg.keyword is not None else None
        if param is None and i < len(params):
            param = params[i]
        if param in summed:
            handed.append((name, arg.value))
    return handed


def _summed_parameters(method: cst.FunctionDef) -> frozenset[str]:
    """The parameters a method adds, as they are, to an attribute of ``self``
    (``self.sum += val * n``; not ``val.item()``, nor a parameter the method reassigns first,
    as ``v = v.item()`` does)."""
    params = {p.name.value for p in method.params.params[1:]} - loop_assigned(method)
    summed: set[str] = set()
    for node in walk(method.body):
        if (
            type(node) is cst.AugAssign
            and type(node.operator) is cst.AddAssign
            and self_attribute(node.target) is not None
            and not any(type(n) is cst.Call for n in walk(node.value))
        ):
            summed |= names_in(node.value) & params
    return frozenset(summed)


# methods of a tensor whose result keeps the tensor's graph
_TENSOR_METHODS = {
    "mean", "sum", "float", "double", "half", "bfloat16", "to", "cuda", "clone",
    "squeeze", "unsqueeze", "view", "reshape", "flatten", "transpose", "permute", "contiguous",
    "gather", "index_select", "exp", "log", "abs", "pow", "sqrt", "neg", "softmax",
    "log_softmax", "sigmoid", "tanh", "clamp", "norm", "expand", "expand_as", "repeat",
    "add", "sub", "mul", "div", "type_as", "view_as", "reshape_as", "type",
}  # fmt: skip


def _surely_a_graph(
    frame: Frame,
    expr: cst.BaseExpression,
    at: Statement | None,
    depth: int,
    carried: frozenset[str] = frozenset(),
    index: int | None = None,
) -> bool:
    """Whether ``expr`` is certainly a tensor computed by a model's forward with its graph:
    a model's output, a loss of torch or of a criterion built from ``torch.nn``, arithmetic on
    those. A call to anything else (a helper of another module) is not certain. ``carried``:
    the parameters of a helper being read that its caller handed such a tensor; ``index``:
    the element of what a helper call returns that is asked about (``loss, n = f(...)``).
    ``depth`` counts the definitions and helpers followed, not the nesting of an expression."""
    if depth > 12:
        return False
    if index is not None and type(expr) is not cst.Call:
        return False
    if type(expr) is cst.BinaryOperation:
        return _surely_a_graph(frame, expr.left, at, depth, carried) or _surely_a_graph(
            frame, expr.right, at, depth, carried
        )
    if type(expr) is cst.UnaryOperation and type(expr.operator) is not cst.Not:
        return _surely_a_graph(frame, expr.expression, at, depth, carried)  # ``-x.mean()``
    if type(expr) in (cst.Subscript, cst.Attribute):
        if type(expr) is cst.Attribute and expr.attr.value in {"data", "grad"}:
            return False
        return _surely_a_graph(frame, expr.value, at, depth, carried)
    if type(expr) is cst.Name:
        if at is None:
            return False
        defs = function_layout(frame).reaching(expr.value, at)
        if defs is None:
            return expr.value in carried  # a helper's parameter
        # each name read once per depth: ``y = x * x + x``, chained, would fan out
        memo = (id(expr), id(at), depth, carried)
        found = frame.graphs.get(memo)
        if found is None:
            found = frame.graphs[memo] = any(
                not d.loop_target
                and _surely_a_graph(
                    frame,
                    d.value,
                    d.statement,
                    depth + 1,
                    carried,
                    tuple_place(frame, expr.value, d.value),
                )
                for d in defs
            )
        return found
    if type(expr) is not cst.Call:
        return False
    func = expr.func
    held = frame.resolve(func) if type(func) in (cst.Name, cst.Attribute) else None
    if held is not None and held.role in (Role.MODEL, Role.LIGHTNING, Role.ENGINE):
        return True
    if type(func) is cst.Attribute and not frame.is_module_name(func.value):
        if func.attr.value in _TENSOR_METHODS:  # (``th.gather(q, 1, a)`` is torch's, below)
            return _surely_a_graph(frame, func.value, at, depth, carried)
        if _FORWARD_METHOD.search(func.attr.value) and (
            _a_model(frame, func.value) or origin(frame, func.value, at).models
        ):
            return True  # ``self.policy.evaluate_actions(obs, actions)``: a forward by name
    qual = frame.ctx.imports.qualify(func) if type(func) in (cst.Name, cst.Attribute) else None
    helper = _helper(frame, func, qual)
    if helper is not None:  # a function or method of the linted files: what it returns
        ctx, node, cls = helper
        positional = [a.value for a in expr.args if a.keyword is None and not a.star]
        keywords = {a.keyword.value: a.value for a in expr.args if a.keyword is not None}
        starred = any(a.star for a in expr.args)  # ``f(*outs, y)``: places shift
        given = {} if starred else given_arguments(node, cls, positional, keywords)
        # the models handed in stay models in there (``fast_adapt(model, batch)`` runs it)
        bound = {name: frame.resolve(arg) for name, arg in given.items() if _a_model(frame, arg)}
        if cls is not None:
            bound["self"] = frame.resolve_name("self")
        scope = node.name.value if cls is None else f"{cls.name}.{node.name.value}"
        callee = Frame(ctx, node, cls, bound, module_frame(ctx), scope)
        handed = frozenset(
            name
            for name, arg in given.items()
            if _surely_a_graph(frame, arg, at, depth + 1, carried)
        )
        returned = [
            (statement, value if index is None else tuple_element(value, index))
            for statement, value in returns_of(node)
        ]
        return bool(returned) and all(
            value is not None and _surely_a_graph(callee, value, statement, depth + 1, handed)
            for statement, value in returned
        )
    if index is not None:
        return False
    if qual is not None and qual.startswith(("torch.nn.functional.", "torch.")):
        return any(_surely_a_graph(frame, a.value, at, depth + 1, carried) for a in expr.args)
    built = constructor_of(frame, func) if type(func) in (cst.Name, cst.Attribute) else None
    maker = frame.ctx.imports.qualify(built.func) or "" if built is not None else ""
    called = (qual or "").rsplit(".", 1)[-1]
    if not called and type(func) is cst.Attribute:
        called = func.attr.value  # ``diffusion.training_losses(...)`` on an unknown object
    loss_like = (maker.startswith("torch.nn.") and maker.endswith("Loss")) or bool(
        _LOSS_NAME.search(called)
    )
    if loss_like:  # ``criterion(model(x), y)``, ``training_losses(model, x, t)``
        return any(
            _surely_a_graph(frame, a.value, at, depth + 1, carried) or _a_model(frame, a.value)
            for a in expr.args
        )
    return False


def _a_model(frame: Frame, expr: cst.BaseExpression) -> bool:
    """A model handed to a loss function that runs it (``training_losses(model, x, t)``)."""
    if type(expr) not in (cst.Name, cst.Attribute):
        return False
    found = frame.resolve(expr)
    return found is not None and found.role in (Role.MODEL, Role.LIGHTNING, Role.ENGINE)


def _helper(
    frame: Frame, func: cst.BaseExpression, qual: str | None
) -> tuple[FileContext, cst.FunctionDef, ClassInfo | None] | None:
    """The function a call runs when it is one of this file or of another linted file, or a
    method of the instance (``self.train_micro_batch(batch)``), with its class."""
    if type(func) is cst.Name and func.value in frame.ctx.functions:
        return frame.ctx, frame.ctx.functions[func.value], None
    if (
        type(func) is cst.Attribute
        and type(func.value) is cst.Name
        and func.value.value == "self"
        and frame.cls is not None
    ):
        found = frame.cls.method(func.attr.value)
        if found is not None:
            return found[0].ctx, found[1], found[0]
        return None
    if qual is None:
        return None
    found_ext = frame.ctx.external(qual)
    if found_ext is not None and type(found_ext[1]) is cst.FunctionDef:
        return found_ext[0], found_ext[1], None
    return None


# model methods that run a forward by another name (RL policies, VAEs, encoders)
_FORWARD_METHOD = re.compile(
    r"(?i)^(forward\w*|evaluate_actions?|action_log_prob|log_prob\w*|get_action(_and_value)?"
    r"|get_value|q\d?_forward|encode|decode|logits)$"
)

_LOSS_NAME = re.compile(
    r"(?i)^(criterion|crit|loss_?fn|loss_?func|compute_loss(es)?|\w*_loss(es)?|loss(es)?)$"
)


_LOSSES = re.compile(r"(?i)loss")


def names_a_loss(expr: cst.BaseExpression) -> bool:
    """Whether a value is named a loss: ``loss``, ``d_loss * n``, ``out.loss``,
    ``losses["total"]``, ``outputs["loss"]``."""
    for node in walk(expr):
        if type(node) is cst.Name and _LOSSES.search(node.value):
            return True
        if type(node) is cst.SimpleString and _LOSSES.search(node.value):
            return True
    return False


def _accumulator(frame: Frame, target: cst.BaseExpression) -> str | None:
    """The name of an accumulator that starts as a number or an empty list: a local set up
    before the loop (``total = 0.0``, ``d_sum, g_sum = 0.0, 0.0``) or an attribute of ``self``
    set up by the class (``self.losses = []`` in ``__init__``)."""
    values: list[cst.BaseExpression] = []
    if type(target) is cst.Name:
        values.extend(frame.local_values.get(target.value, ()))
        for i, value in frame.tuple_values.get(target.value, ()):
            if type(value) in (cst.Tuple, cst.List) and i < len(value.elements):
                values.append(value.elements[i].value)
    elif (
        type(target) is cst.Attribute
        and type(target.value) is cst.Name
        and target.value.value == "self"
        and frame.cls is not None
    ):
        for info in frame.cls.mro():
            values.extend(value for value, _ in info.attr_values.get(target.attr.value, ()))
    else:
        return None
    if any(_starts_empty(value) for value in values):
        return dotted(target)
    return None


def _starts_empty(value: cst.BaseExpression) -> bool:
    """``0.0``, ``[]``, or a zero tensor (``torch.tensor(0.0, device=...)``, ``torch.zeros(1)``)."""
    if type(value) in (cst.Integer, cst.Float):
        return True
    if type(value) is cst.List:
        return not value.elements
    if type(value) is cst.Call and type(value.func) is cst.Attribute and value.args:
        first = value.args[0].value
        if value.func.attr.value == "tensor":
            return type(first) in (cst.Integer, cst.Float) and first.value in ("0", "0.0", "0.")
        if value.func.attr.value == "zeros":
            return type(first) in (cst.Integer, cst.Tuple) or (
                type(first) is cst.List and not first.elements
            )
    return False
