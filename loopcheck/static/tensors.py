"""What a training loop does with tensors besides the five moves: losses summed or collected
across iterations with their graph (LC501), losses computed and dropped without a backward
(LC104), and which functions evaluate a model (LC502)."""

from __future__ import annotations

import re

import libcst as cst

from loopcheck.static.bodies import function_layout, returns_of
from loopcheck.static.callees import BACKWARD_CALLS, given_arguments
from loopcheck.static.classes import ClassInfo, self_attribute
from loopcheck.static.dataflow import origin, tuple_element, tuple_place
from loopcheck.static.frames import Frame, module_frame
from loopcheck.static.index import EVALUATING as _EVALUATING
from loopcheck.static.index import FileContext
from loopcheck.static.ownership import constructor_of
from loopcheck.static.reaching import Statement
from loopcheck.static.roles import Imports, Role
from loopcheck.static.syntax import dotted, literal, loop_assigned, names_in
from loopcheck.static.tree import is_expression, kids, walk


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
    if not _names_a_loss(added) and not _LOSSES.search(name):
        return False  # outputs or features collected: an evaluation's business (LC502)
    # a model's graph reaches it (what else does need not be known: it is certainly a graph)
    if not origin(frame, added, at).models:
        return False
    # through a helper we cannot see, it may be ``loss.item()``
    return _surely_a_graph(frame, added, at, 0)


def _metered(frame: Frame, call: cst.Call) -> list[tuple[str, cst.BaseExpression]]:
    """``losses.update(loss, n)`` on a meter, an instance of a class of the linted files whose
    method adds the argument to an attribute of its own (``self.sum += val * n``): the
    meter's name with each value so handed in."""
    func = call.func
    if type(func) is not cst.Attribute or not call.args:
        return []
    name = dotted(func.value)
    if not (name and _LOSSES.search(name)) and not any(_names_a_loss(a.value) for a in call.args):
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
    "log_softmax", "sigmoid", "tanh", "clamp", "norm",
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
    the element of what a helper call returns that is asked about (``loss, n = f(...)``)."""
    if depth > 12:
        return False
    if index is not None and type(expr) is not cst.Call:
        return False
    if type(expr) is cst.BinaryOperation:
        return _surely_a_graph(frame, expr.left, at, depth + 1, carried) or _surely_a_graph(
            frame, expr.right, at, depth + 1, carried
        )
    if type(expr) is cst.UnaryOperation and type(expr.operator) is not cst.Not:
        return _surely_a_graph(frame, expr.expression, at, depth + 1, carried)  # ``-x.mean()``
    if type(expr) in (cst.Subscript, cst.Attribute):
        if type(expr) is cst.Attribute and expr.attr.value in {"data", "grad"}:
            return False
        return _surely_a_graph(frame, expr.value, at, depth + 1, carried)
    if type(expr) is cst.Name:
        if at is None:
            return False
        defs = function_layout(frame).reaching(expr.value, at)
        if defs is None:
            return expr.value in carried  # a helper's parameter
        return any(
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
    if type(expr) is not cst.Call:
        return False
    func = expr.func
    held = frame.resolve(func) if type(func) in (cst.Name, cst.Attribute) else None
    if held is not None and held.role in (Role.MODEL, Role.LIGHTNING, Role.ENGINE):
        return True
    if type(func) is cst.Attribute and not frame.is_module_name(func.value):
        if func.attr.value in _TENSOR_METHODS:  # (``th.gather(q, 1, a)`` is torch's, below)
            return _surely_a_graph(frame, func.value, at, depth + 1, carried)
        if _FORWARD_METHOD.search(func.attr.value) and (
            _a_model(frame, func.value) or origin(frame, func.value, at).models
        ):
            return True  # ``self.policy.evaluate_actions(obs, actions)``: a forward by name
    qual = frame.ctx.imports.qualify(func) if type(func) in (cst.Name, cst.Attribute) else None
    helper = _helper(frame, func, qual)
    if helper is not None:  # a function of the linted files: what every return of it is
        ctx, node = helper
        callee = Frame(ctx, node, None, {}, module_frame(ctx), node.name.value)
        positional = [a.value for a in expr.args if a.keyword is None and not a.star]
        keywords = {a.keyword.value: a.value for a in expr.args if a.keyword is not None}
        starred = any(a.star for a in expr.args)  # ``f(*outs, y)``: places shift
        handed = frozenset(
            name
            for name, arg in given_arguments(node, None, positional, keywords).items()
            if not starred and _surely_a_graph(frame, arg, at, depth + 1, carried)
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
) -> tuple[FileContext, cst.FunctionDef] | None:
    """The function a call runs when it is one of this file or of another linted file."""
    if type(func) is cst.Name and func.value in frame.ctx.functions:
        return frame.ctx, frame.ctx.functions[func.value]
    if qual is None:
        return None
    found = frame.ctx.external(qual)
    if found is not None and type(found[1]) is cst.FunctionDef:
        return found[0], found[1]
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


def _names_a_loss(expr: cst.BaseExpression) -> bool:
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
    return type(value) in (cst.Integer, cst.Float) or (
        type(value) is cst.List and not value.elements
    )


def unrolls_graph(ctx: FileContext, func: cst.FunctionDef | None) -> bool:
    """Whether a function differentiates through its own steps (``torch.autograd.grad(...,
    create_graph=True)``: MAML-style inner loops), so that its losses keep their graphs on
    purpose (cached per function)."""
    body = func.body if func is not None else ctx.module
    return ctx.remember(
        "unrolls",
        func,
        lambda: any(
            type(node) is cst.Call
            and (dotted(node.func) or "").endswith("autograd.grad")
            and any(
                arg.keyword is not None
                and arg.keyword.value == "create_graph"
                and not (type(arg.value) is cst.Name and arg.value.value == "False")
                for arg in node.args
            )
            for node in walk(body)
        ),
    )


# Differentiable optimizers that take gradients inside a forward (the library ``higher``).
_DIFFERENTIABLE = {"get_diff_optim", "innerloop_ctx", "DifferentiableOptimizer"}


def forward_takes_gradients(cls: ClassInfo) -> bool:
    """Whether a model's ``forward`` (or a method of its own that it calls) differentiates:
    ``torch.autograd.grad``, ``backward()``, ``torch.enable_grad()``, a differentiable
    optimizer. Evaluating such a model needs gradients on (an energy minimised per input, a
    MAML learner)."""
    found = cls.method("forward")
    if found is None:
        return False
    info, forward = found
    return info.ctx.remember("takes-gradients", forward, lambda: _takes_gradients(info, forward))


def _takes_gradients(info: ClassInfo, forward: cst.FunctionDef) -> bool:
    bodies = [forward]
    for node in walk(forward.body):
        func = node.func if type(node) is cst.Call else None
        if type(func) is cst.Attribute and dotted(func.value) == "self":
            method = info.method(func.attr.value)
            if method is not None and method[1] not in bodies:
                bodies.append(method[1])
    for body in bodies:
        for node in walk(body.body):
            if type(node) is not cst.Call:
                continue
            name = dotted(node.func) or ""
            last = name.rsplit(".", 1)[-1]
            if name.endswith("autograd.grad") or last in ("backward", "enable_grad"):
                return True
            if last in _DIFFERENTIABLE:
                return True
    return False


def frozen_module(cls: ClassInfo) -> bool:
    """Whether a module class (defined in a linted file) has no trainable parameter: a direct
    ``nn.Module`` whose only modules are built frozen (``Embedding.from_pretrained(...,
    freeze=True)``), and whose attributes hold nothing else that may be a module (values
    computed by ``torch`` functions or from its own attributes). Unsure: False."""
    return cls.ctx.remember("frozen", cls.node, lambda: _frozen(cls))


def _frozen(cls: ClassInfo) -> bool:
    if cls.base_names != ["torch.nn.Module"]:
        return False
    imports = cls.ctx.imports
    for node in walk(cls.node.body):
        if type(node) is cst.Call:
            qual = imports.qualify(node.func) or ""
            parts = qual.split(".")
            if qual.startswith("torch.nn.") and any(p[:1].isupper() for p in parts):
                if not (parts[-1] == "from_pretrained" and _keyword_true(node, "freeze")):
                    return False  # a module or parameter built with weights to train
            elif parts[-1] in ("register_parameter", "add_module", "Parameter"):
                return False
        elif type(node) in (cst.Assign, cst.AnnAssign):
            targets = node.targets if type(node) is cst.Assign else [node]
            if any((dotted(t.target) or "").startswith("self.") for t in targets):
                if node.value is None or not _plain_value(node.value, imports):
                    return False
    return True


def _keyword_true(call: cst.Call, name: str) -> bool:
    return any(
        arg.keyword is not None
        and arg.keyword.value == name
        and type(arg.value) is cst.Name
        and arg.value.value == "True"
        for arg in call.args
    )


def _plain_value(value: cst.BaseExpression, imports: Imports) -> bool:
    """A value stored on a frozen module's ``self`` that cannot be a module to train: built
    frozen, or computed by ``torch`` functions and the module's own methods. A name, item or
    attribute handed in (``self.encoder = encoder``) may be a module: not plain."""
    if type(value) in (cst.Name, cst.Subscript) or (
        type(value) is cst.Attribute and not (dotted(value) or "").startswith("self.")
    ):
        return type(value) is cst.Name and value.value in ("True", "False", "None")
    stack: list[cst.CSTNode] = [value]
    while stack:
        node = stack.pop()
        if type(node) is cst.Call:
            qual = imports.qualify(node.func) or ""
            if qual.endswith(".from_pretrained") and _keyword_true(node, "freeze"):
                continue  # whatever its weights are made of, they do not train
            if not ((dotted(node.func) or "").startswith("self.") or qual.startswith("torch.")):
                return False
        stack.extend(kids(node))
    return True


def backpropagated(ctx: FileContext, func: cst.FunctionDef | None) -> frozenset[str]:
    """Names whose value reaches a ``backward()`` in a function: the receivers and arguments of
    backward calls, and the names assigned into them (``loss = total / n``)."""
    return ctx.remember("backprop", func, lambda: _backpropagated(ctx, func))


def dead_losses(ctx: FileContext, func: cst.FunctionDef | None) -> frozenset[str]:
    """Losses a function computes and drops: names with ``loss`` in them, assigned, that no
    backward reaches and that nothing reads but for the log (``d_loss`` only read with
    ``.item()`` once its ``backward()`` is gone; not ``losses.update(...)``, a meter)."""
    return ctx.remember("dead losses", func, lambda: _dead_losses(ctx, func))


def _dead_losses(ctx: FileContext, func: cst.FunctionDef | None) -> frozenset[str]:
    body = func.body if func is not None else ctx.module
    assigned: set[str] = set()
    skipped: set[int] = set()  # the assignment targets, and names only read for the log
    names: list[cst.Name] = []
    for node in walk(body):
        if type(node) is cst.Assign:
            for target in node.targets:
                if type(target.target) is cst.Name:
                    name = target.target.value
                    skipped.add(id(target.target))
                    # ``d_loss = d_loss + penalty`` reads it only to build it
                    skipped |= {
                        id(n) for n in walk(node.value) if type(n) is cst.Name and n.value == name
                    }
                    # (not a running total set up as ``epoch_loss = 0.0``)
                    if "loss" in name.lower() and not literal(node.value)[0]:
                        assigned.add(name)
            if type(node.value) is cst.Name and all(_logged_into(t.target) for t in node.targets):
                skipped.add(id(node.value))  # ``loss_dict["g"] = g_loss``: kept for the log
        elif type(node) is cst.AugAssign and type(node.target) is cst.Name:
            skipped.add(id(node.target))
        elif type(node) is cst.Attribute and node.attr.value in _LOGGED:
            if type(node.value) is cst.Name:
                skipped.add(id(node.value))  # ``d_loss.item()``
        elif type(node) is cst.Name:
            names.append(node)
    used = {n.value for n in names if id(n) not in skipped and n.value in assigned}
    return frozenset(assigned - used - backpropagated(ctx, func))


# what reading a loss for the log calls on it
_LOGGED = {"item", "detach", "cpu", "numpy", "tolist", "data"}
# containers that keep values for the log (``loss_dict``, ``logs``, ``stats``, ``metrics``)
_LOG_CONTAINER = re.compile(r"(?i)(^|_)(dict|logs?|log_dict|stats|metrics|info|records?)$")


def _logged_into(target: cst.BaseExpression) -> bool:
    """``loss_dict["g"]``: an entry, under a literal key, of a container kept for the log."""
    return (
        type(target) is cst.Subscript
        and type(target.value) is cst.Name
        and _LOG_CONTAINER.search(target.value.value) is not None
        and len(target.slice) == 1
        and type(target.slice[0].slice) is cst.Index
        and type(target.slice[0].slice.value) is cst.SimpleString
    )


def _backpropagated(ctx: FileContext, func: cst.FunctionDef | None) -> frozenset[str]:
    body = func.body if func is not None else ctx.module
    names: set[str] = set()
    assigned: dict[str, set[str]] = {}
    for node in walk(body):
        if type(node) is cst.Call and type(node.func) is cst.Attribute:
            if node.func.attr.value in BACKWARD_CALLS:
                names |= names_in(node.func.value)
                for arg in node.args:
                    names |= names_in(arg.value)
        elif type(node) is cst.Assign:
            for target in node.targets:
                if type(target.target) is cst.Name:
                    assigned.setdefault(target.target.value, set()).update(names_in(node.value))
        elif type(node) is cst.AugAssign and type(node.target) is cst.Name:
            assigned.setdefault(node.target.value, set()).update(names_in(node.value))
    changed = True
    while changed:
        changed = False
        for target, sources in assigned.items():
            if target in names and not sources <= names:
                names |= sources
                changed = True
    return frozenset(names)


def evaluates(ctx: FileContext, func: cst.FunctionDef | None) -> bool:
    """A function named for evaluating a model (``validate``, ``evaluate``, ``test``). One
    that only calls ``model.eval()`` somewhere evaluates in the loops entered with a model in
    eval mode (see the loop interpreter), not in all its loops: a ``main()`` that trains a
    teacher's targets in one loop and evaluates in another."""
    if func is None or func.name.value.startswith("test_"):
        return False  # a unit test (memory is no concern there)
    if any(
        info.name.startswith("Test") and info.methods.get(func.name.value) is func
        for info in ctx.classes.values()
    ):
        return False  # ``class TestNoOptim: def test(self):``, pytest's unit test
    return bool(_EVALUATING.search(func.name.value))


_GRAD_SWITCHES = {"no_grad", "inference_mode", "set_grad_enabled", "requires_grad_"}


def switches_gradients(ctx: FileContext, func: cst.FunctionDef | None) -> bool:
    """A function that turns gradients off by other means than a ``with`` block or decorator
    around its loop (``torch.set_grad_enabled(False)`` as a statement, an ExitStack context,
    ``model.requires_grad_(False)``): its forwards are not judged for LC502."""
    body: cst.CSTNode = func.body if func is not None else ctx.module

    def switches() -> bool:
        nodes = list(walk(body)) if func is not None else _own_nodes(body)
        # a ``with torch.no_grad():`` block or decorator scopes its own forwards, which are
        # judged one by one: it says nothing of a loop beside it
        scoped = set()
        for item in nodes:
            if type(item) in (cst.WithItem, cst.Decorator):
                callee = _callee(item)
                scoped |= {id(callee), id(getattr(callee, "attr", None))}
        return any(
            (
                type(node) is cst.Attribute
                and node.attr.value in _GRAD_SWITCHES
                or type(node) is cst.Name
                and node.value in _GRAD_SWITCHES
            )
            and id(node) not in scoped
            for node in nodes
        )

    return ctx.remember("switches", func, switches)


_BLOCK_SWITCHES = {"no_grad", "inference_mode"}


def _callee(node: cst.WithItem | cst.Decorator) -> cst.CSTNode | None:
    """What a ``with`` item or decorator calls, when it turns gradients off by itself
    (``torch.no_grad()``, ``@torch.inference_mode``)."""
    expr = node.item if type(node) is cst.WithItem else node.decorator
    if type(expr) is cst.Call:
        expr = expr.func
    last = expr.attr.value if type(expr) is cst.Attribute else getattr(expr, "value", None)
    return expr if last in _BLOCK_SWITCHES else None


def _own_nodes(body: cst.CSTNode) -> list[cst.CSTNode]:
    """The nodes of a body outside the functions and classes defined in it."""
    out: list[cst.CSTNode] = []
    stack = [body]
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(kid for kid in kids(node) if type(kid) not in (cst.FunctionDef, cst.ClassDef))
    return out
