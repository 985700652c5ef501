"""What a training loop does with tensors besides the five moves: losses computed and dropped
without a backward (LC104), which functions evaluate a model or switch gradients off (LC502),
unit tests, and modules whose forward takes or freezes gradients. Losses kept across
iterations with their graph (LC501) are in ``kept``."""

from __future__ import annotations

import re

import libcst as cst

from loopcheck.static.callees import BACKWARD_CALLS
from loopcheck.static.classes import ClassInfo, is_test_class
from loopcheck.static.foreign import LOOKS_ONLY
from loopcheck.static.index import EVALUATING as _EVALUATING
from loopcheck.static.index import FileContext
from loopcheck.static.roles import Imports
from loopcheck.static.syntax import called_name, dotted, literal, names_in
from loopcheck.static.tree import kids, walk


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
        elif type(node) is cst.Assert:
            # ``assert torch.isfinite(losses).all()``: checked, not used
            skipped |= {id(n) for n in walk(node) if type(n) is cst.Name}
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
    if func is None or unit_test(ctx, func):
        return False  # a unit test (memory is no concern there)
    return bool(_EVALUATING.search(func.name.value))


def over_held_out_data(ctx: FileContext, func: cst.FunctionDef | None, loop: cst.CSTNode) -> bool:
    """A loop over a loader named for held-out data (``for x, y in test_loader:``,
    ``val_dataloader``, ``eval_ds``): an evaluation, wherever it stands (a tutorial's module
    level after the training loop)."""
    if type(loop) is not cst.For or unit_test(ctx, func):
        return False
    return any(type(node) is cst.Name and _HELD_OUT.search(node.value) for node in walk(loop.iter))


# a loader of held-out data: ``test_loader``, ``val_dl``, ``eval_dataloader``, ``valid_data``
_HELD_OUT = re.compile(
    r"(?i)^(test|val|valid|validation|eval|dev)_?(loader|dataloader|dl|data|dataset|ds|iter)s?$"
)


def unit_test(ctx: FileContext, func: cst.FunctionDef | None) -> bool:
    """A unit test or one of its helpers: a ``test_*`` function, or a method of a ``Test*``
    class (``class TestNoOptim: def test(self):``, a ``run_fsdp2`` helper of a TestCase). It
    runs a handful of iterations to compare what comes out: memory is no concern there."""
    if func is None:
        return False
    if func.name.value.startswith(("test_", "_test_")):
        return True  # (``_test_weighted_adapters``: a test's body, shared by several tests)
    return any(
        is_test_class(info.name) and info.methods.get(func.name.value) is func
        for info in ctx.classes.values()
    )


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


_TRAINING_CALLS = {"backward", "step", "manual_backward", "zero_grad", "grad"}
# calls that only show what they are given: builtins that look, numbers made for a log, and
# the methods of loggers and progress bars
_SHOWS = LOOKS_ONLY | {"format", "float", "int", "round"}
_SHOWS_ON = re.compile(r"^(log\w*|logger|logging|wandb|writer|tb|tqdm|pbar)$")


def evaluation_block(loop: cst.CSTNode, eval_call: cst.CSTNode, forward: cst.CSTNode) -> bool:
    """Whether the innermost ``if`` of the loop holding both the ``eval()`` call and the
    forward makes no training move: an evaluation done every so often inside training. Any
    call handed what the block computed (``update(loss)``, ``learner.adapt(loss_fn(...))``)
    may train, unless it only shows it (``print``, a logger)."""
    block = None
    for node in walk(loop):
        if type(node) is not cst.If:
            continue
        inside = {id(n) for n in walk(node.body)}
        if id(eval_call) in inside and id(forward) in inside:
            block = node  # walked outer first: the last one found is the innermost
    if block is None:
        return False
    assigned = {
        target.target.value
        for node in walk(block.body)
        if type(node) is cst.Assign
        for target in node.targets
        if type(target.target) is cst.Name
    }
    for node in walk(block.body):
        if type(node) is not cst.Call or node is forward:
            continue
        if called_name(node) in _TRAINING_CALLS:
            return False
        if called_name(node) in _SHOWS or _SHOWS_ON.match(
            (dotted(node.func) or "").partition(".")[0]
        ):
            continue
        for arg in node.args:
            value = arg.value
            if type(value) is cst.Name and value.value in assigned:
                return False  # ``update(loss)``
            if type(value) is cst.Call and any(n is forward for n in walk(value) if n is not value):
                return False  # ``learner.adapt(loss_fn(model(x), y))``
    return True
