"""What a function of the linted files does with what it is given, found once per function:
the names it calls, whether it hands its parameters on, the closures it steps with, the literal
values a call binds, the parameters it tests against None, whether it steps optimizers in
gradient hooks, may step or runs a backward at all, or does nothing at all; and whether a loop
may clear. The reader and the interpreter ask these at every call site or loop (calls into
other libraries are judged in ``foreign``)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import libcst as cst

from loopcheck.static.classes import ClassInfo
from loopcheck.static.foreign import LOOKS_ONLY, is_pipeline_schedule
from loopcheck.static.frames import Frame
from loopcheck.static.index import FileContext
from loopcheck.static.relevance import CLEARING_NAMES
from loopcheck.static.roles import Role, role_from_name, steps_no_optimizer
from loopcheck.static.syntax import (
    called_name,
    decorators,
    dotted,
    literal,
    local_functions,
    names_in,
    params_of,
    without_not,
)
from loopcheck.static.tree import kids, walk

_CALLED: dict[int, tuple[cst.FunctionDef, frozenset[str]]] = {}


def called_names(func: cst.FunctionDef) -> frozenset[str]:
    """The plain names a function calls (remembered per function: helpers are asked about
    again at every call)."""
    known = _CALLED.get(id(func))
    if known is not None and known[0] is func:
        return known[1]
    if len(_CALLED) > 4096:
        _CALLED.clear()
    names = frozenset(
        node.func.value
        for node in walk(func.body)
        if type(node) is cst.Call and type(node.func) is cst.Name
    )
    _CALLED[id(func)] = (func, names)
    return names


def handed_callbacks(ctx: FileContext, func: cst.FunctionDef) -> list[tuple[cst.FunctionDef, bool]]:
    """The functions defined in ``func`` that take part in a step and that it hands to a
    call or returns instead of calling them: a framework or the caller runs them once per
    batch (ignite's ``Engine(train_step)``, a factory's ``return train_step``: True, its
    caller clears between calls). A closure handed to ``step(closure)`` is followed there.
    One that cannot step (DLRM's ``forward_backward`` handed to a CUDA-graph wrapper, whose
    caller steps after it) is part of a step whose update is the caller's: no loop of its own."""
    defs = ctx.function_info(func).local_defs
    if not defs:
        return []
    handed: dict[str, cst.FunctionDef] = {}
    returned: set[str] = set()
    for node in walk(func.body):
        if type(node) is cst.Return and type(node.value) is cst.Name:
            if node.value.value in defs:
                # ``return train_step``: a step factory, whose caller runs it once per batch
                handed[node.value.value] = defs[node.value.value]
                returned.add(node.value.value)
            continue
        if type(node) is not cst.Call:
            continue
        if called_name(node) in ("step", "partial"):
            continue  # ``opt.step(closure)`` follows it; ``partial(fn, ...)`` is called later
        for arg in node.args:
            value = arg.value
            if type(value) is cst.Name and value.value in defs:
                handed[value.value] = defs[value.value]
    called = called_names(func)
    info = ctx.function_info(func)
    out = []
    for name, node in handed.items():
        if name in called:
            continue
        # ignite's ``training_step`` calling its siblings ``forward_pass`` and
        # ``backward_pass = amp_backward_pass``: their moves are the callback's
        reached = _sibling_defs(node, defs, info.local_values)
        if (
            any(id(n) in ctx.relevant for n in reached)
            and any(runs_backward(ctx, n, None) for n in reached)
            and any(may_step(ctx, n) for n in reached)
        ):
            out.append((node, name in returned))
    return out


def _sibling_defs(
    node: cst.FunctionDef,
    defs: dict[str, cst.FunctionDef],
    values: dict[str, list[cst.BaseExpression]],
) -> list[cst.FunctionDef]:
    """A local function and the functions defined beside it that it calls, directly or
    through a name bound to one of them (``backward_pass = amp_backward_pass``)."""
    reached = [node]
    seen = {id(node)}
    for current in reached:
        for name in called_names(current):
            for target in local_functions(name, defs, values):
                if id(target) not in seen:
                    seen.add(id(target))
                    reached.append(target)
    return reached


def passes_parameters_on(ctx: FileContext, func: cst.FunctionDef) -> bool:
    """Whether a function hands one of its parameters to a call (which may do anything with
    an optimizer or model it receives); cached per function."""
    return bool(passed_on(ctx, func))


def passed_on(ctx: FileContext, func: cst.FunctionDef) -> frozenset[str]:
    """The parameters a function hands to calls (``save_on_master(optimizer)``), as opposed
    to those it only calls methods of (``optimizer.state_dict()``) or builds a learning-rate
    schedule over (``LambdaLR(optimizer, ...)``); cached per function."""
    names = {p.name.value for p in params_of(func)} | {
        p.name.value for p in func.params.kwonly_params
    }
    names.discard("self")
    return ctx.remember(
        "passes",
        func,
        lambda: frozenset(
            a.value.value
            for node in walk(func.body)
            if type(node) is cst.Call and not _only_looks(ctx, node.func)
            for a in node.args
            if type(a.value) is cst.Name and a.value.value in names
        ),
    )


def _only_looks(ctx: FileContext, func: cst.BaseExpression) -> bool:
    if type(func) is cst.Name and func.value in LOOKS_ONLY:
        return True
    # ``torch.optim.lr_scheduler.LambdaLR(optimizer, ...)``,
    # ``transformers.get_cosine_schedule_with_warmup(optimizer, ...)``: a schedule built over it
    qual = ctx.imports.qualify(func) if type(func) in (cst.Name, cst.Attribute) else None
    return qual is not None and bool(_SCHEDULE_BUILDER.search(qual))


_SCHEDULE_BUILDER = re.compile(r"lr_scheduler\.|(^|\.)get_\w*schedule\w*$")


def closure_names(ctx: FileContext, func: cst.FunctionDef) -> frozenset[str]:
    """Names passed as the closure of an optimizer step in a function (``opt.step(closure)``)."""
    return ctx.remember(
        "closures",
        func,
        lambda: frozenset(
            node.args[0].value.value
            for node in walk(func.body)
            if type(node) is cst.Call
            and type(node.func) is cst.Attribute
            and node.func.attr.value == "step"
            and node.args
            and type(node.args[0].value) is cst.Name
        ),
    )


def own_params(node: cst.FunctionDef, cls: ClassInfo | None) -> list[cst.Param]:
    """The positional parameters a call fills: a method's ``self``/``cls`` left out."""
    params = params_of(node)
    if cls is not None and params and params[0].name.value in {"self", "cls"}:
        return params[1:]
    return params


def given_arguments(
    node: cst.FunctionDef,
    cls: ClassInfo | None,
    positional: Sequence[cst.BaseExpression],
    keywords: dict[str, cst.BaseExpression],
) -> dict[str, cst.BaseExpression]:
    """What each parameter of a called function receives from the call: positional arguments
    in order, then keywords that name a parameter."""
    params = own_params(node, cls)
    names = {p.name.value for p in [*params, *node.params.kwonly_params]}
    given = dict(zip((p.name.value for p in params), positional, strict=False))
    given.update((k, v) for k, v in keywords.items() if k in names)
    return given


def constants_of(
    node: cst.FunctionDef,
    positional: Sequence[cst.BaseExpression],
    keywords: dict[str, cst.BaseExpression],
    cls: ClassInfo | None,
) -> tuple[tuple[str, object], ...]:
    """The parameters of a followed call that hold literal values: literal arguments, and
    literal defaults of parameters the call does not pass."""
    given = given_arguments(node, cls, positional, keywords)
    out: dict[str, object] = {}
    for param in [*own_params(node, cls), *node.params.kwonly_params]:
        name = param.name.value
        ok, value = literal(given.get(name, param.default))
        if ok:
            out[name] = value
    return tuple(out.items())


_HOOK_REGISTRATIONS = frozenset({"register_post_accumulate_grad_hook", "register_hook"})


def steps_in_hooks(ctx: FileContext, func: cst.FunctionDef | None) -> bool:
    """Whether a function registers gradient hooks on parameters that update them (a fused
    backward pass: each parameter is stepped as soon as its gradient is ready), so that its
    backward calls may step optimizers (cached per function). The hook, or the factory that
    makes it, is defined in the function."""
    if func is None:
        return False
    return ctx.remember("hooks", func, lambda: _steps_in_hooks(func))


def _steps_in_hooks(func: cst.FunctionDef) -> bool:
    registers = False
    hooked: set[str] = set()
    for node in walk(func.body):
        if not (type(node) is cst.Call and type(node.func) is cst.Attribute):
            continue
        if node.func.attr.value in _HOOK_REGISTRATIONS:
            registers = True
            hook = node.args[0].value if node.args else None
            if type(hook) is cst.Call:
                hook = hook.func  # ``create_grad_hook(group)``: a factory of hooks
            if type(hook) is cst.Name:
                hooked.add(hook.value)
    return registers and any(
        type(node) is cst.FunctionDef
        and node.name.value in hooked
        and any(
            type(call) is cst.Call
            and type(call.func) is cst.Attribute
            and call.func.attr.value.startswith("step")
            for call in walk(node.body)
        )
        for node in walk(func.body)
    )


def _none_or_choice(value: cst.BaseExpression | None) -> bool:
    return type(value) is cst.IfExp or (type(value) is cst.Name and value.value == "None")


def maybe_none_values(values: Sequence[cst.BaseExpression]) -> bool:
    """Whether one of the values assigned to a name is None or a conditional expression."""
    return any(_none_or_choice(v) for v in values)


def none_tested(ctx: FileContext, func: cst.FunctionDef) -> frozenset[str]:
    """The parameters a function defaults to None or tests against None (``x is None``,
    ``x is not None``, ``if x:``): what it was given may be None (cached per function)."""
    return ctx.remember("none-tested", func, lambda: _none_tested(func))


def _none_tested(func: cst.FunctionDef) -> frozenset[str]:
    names = {p.name.value for p in params_of(func) if _none_or_choice(p.default)}
    for node in walk(func.body):
        if type(node) is cst.Comparison and type(node.left) is cst.Name:
            if any(
                type(t.operator) in (cst.Is, cst.IsNot)
                and type(t.comparator) is cst.Name
                and t.comparator.value == "None"
                for t in node.comparisons
            ):
                names.add(node.left.value)
        elif type(node) in (cst.If, cst.While, cst.IfExp):
            test = without_not(node.test)[0]
            if type(test) is cst.Name:
                names.add(test.value)
    return frozenset(names)


def may_step(ctx: FileContext, method: cst.FunctionDef) -> bool:
    """Whether a method's text may step an optimizer (cached per method): a ``.step()``
    call on anything but an environment or a scheduler (an RL algorithm's rollout method
    calls ``env.step(actions)``)."""
    return _calls_method(
        ctx,
        method,
        "may step",
        lambda name, receiver, call: (
            name == "step"
            and not _not_an_optimizer(receiver)
            and not is_pipeline_schedule(receiver, call)
        ),
    )


def _calls_method(
    ctx: FileContext,
    func: cst.FunctionDef,
    kind: str,
    accept: Callable[[str, cst.BaseExpression, cst.Call], bool],
) -> bool:
    """Whether a function's text calls a method ``accept`` takes (by its name and receiver),
    cached per function and ``kind`` of question."""
    return ctx.remember(
        kind,
        func,
        lambda: any(
            type(node) is cst.Call
            and type(node.func) is cst.Attribute
            and accept(node.func.attr.value, node.func.value, node)
            for node in walk(func.body)
        ),
    )


def _not_an_optimizer(receiver: cst.BaseExpression) -> bool:
    last = (dotted(receiver) or "").rpartition(".")[2]
    return steps_no_optimizer(last) or role_from_name(last) is Role.SCHEDULER


def backward_of(func: cst.FunctionDef, names: frozenset[str]) -> bool:
    """Whether a function backpropagates one of ``names`` (its parameters handed a loss):
    ``loss.backward()``, ``scaler.scale(loss).backward()``."""
    for node in walk(func.body):
        if type(node) is cst.Call and type(node.func) is cst.Attribute:
            if node.func.attr.value in BACKWARD_CALLS and names_in(node.func.value) & names:
                return True
    return False


def runs_backward(ctx: FileContext, func: cst.FunctionDef, cls: ClassInfo | None) -> bool:
    """Whether a function runs a backward: its text calls ``backward``, or that of a function
    or method of its own it calls (``train_step`` calling ``self.forward_backward_step``);
    cached per function and class."""
    kind = f"runs backward {cls.name if cls is not None else ''}"
    return ctx.remember(kind, func, lambda: _runs_backward(ctx, func, cls, set()))


def _runs_backward(
    ctx: FileContext, func: cst.FunctionDef, cls: ClassInfo | None, seen: set[int]
) -> bool:
    seen.add(id(func))
    callees: list[tuple[FileContext, cst.FunctionDef]] = []
    for node in walk(func.body):
        if type(node) is not cst.Call:
            continue
        callee = node.func
        if type(callee) is cst.Attribute:
            if callee.attr.value in BACKWARD_CALLS:
                return True
            if type(callee.value) is cst.Name and callee.value.value == "self" and cls:
                found = cls.method(callee.attr.value)
                if found is not None:
                    callees.append((found[0].ctx, found[1]))
        elif type(callee) is cst.Name and callee.value in ctx.functions:
            callees.append((ctx, ctx.functions[callee.value]))
    return any(
        id(node) not in seen and _runs_backward(where, node, cls, seen) for where, node in callees
    )


BACKWARD_CALLS = frozenset({"backward", "manual_backward"})  # a backward by its method


def may_clear(frame: Frame, loop: cst.CSTNode, callee: Callee) -> bool:
    """Whether a loop may clear gradients: a clear in its text (``zero_grad()``, ``.grad =``),
    a call of a function or method of the linted files that takes part in a step (``callee``
    names what a call runs, as the reader resolves it), or a call we cannot see into that is
    handed an optimizer. Cached per loop and class (the same loop run for two subclasses
    resolves ``self`` apart)."""
    cls = frame.cls
    kind = f"may clear {cls.name if cls is not None else ''}"
    return frame.ctx.remember(kind, loop, lambda: _may_clear(frame, loop, callee))


def names_a_move(ctx: FileContext, loop: cst.CSTNode) -> bool:
    """Whether a loop's text calls something named for a backward or a step (cached per
    loop): a loop without (moving a batch to the device) takes no part in the protocol."""
    return ctx.remember(
        "names a move",
        loop,
        lambda: any(
            type(node) is cst.Call and any(word in called_name(node) for word in _MOVES)
            for node in walk(loop)
        ),
    )


_MOVES = ("backward", "step")


# What a call runs, as the reader resolves it: the definitions of the linted files (with their
# file, class and bound ``self``), or None when it names none.
Callee = Callable[
    [cst.BaseExpression], "list[tuple[FileContext, cst.FunctionDef, ClassInfo | None, Any]] | None"
]


def _may_clear(frame: Frame, loop: cst.CSTNode, callee: Callee) -> bool:
    for node in walk(loop):
        if type(node) is cst.AssignTarget and type(node.target) is cst.Attribute:
            if node.target.attr.value == "grad":
                return True
        if type(node) is not cst.Call:
            continue
        name = dotted(node.func) or ""
        if name.rpartition(".")[2] in CLEARING_NAMES:
            return True
        if name.partition(".")[0] in _LIBRARIES:
            continue  # ``torch.cat(...)``, ``np.mean(...)``: clears nothing
        defined = callee(node.func)
        if defined is not None:
            if any(id(definition) in where.relevant for where, definition, _, _ in defined):
                return True
            continue  # functions of the linted files that take no part in a step
        for arg in node.args:
            if type(arg.value) not in (cst.Name, cst.Attribute):
                continue
            last = (dotted(arg.value) or "").rpartition(".")[2]
            if role_from_name(last) not in (Role.OPTIMIZER, Role.ENGINE):
                continue  # only a name that may hold an optimizer is worth resolving
            obj = frame.resolve(arg.value)
            if obj is not None and obj.role in (Role.OPTIMIZER, Role.ENGINE):
                return True  # ``reset(opt)``: handed to code we cannot see into
    return False


_LIBRARIES = frozenset({"torch", "np", "numpy", "math", "F", "nn", "random", "time", "os", "json"})


def does_nothing(info: ClassInfo, method: cst.FunctionDef) -> bool:
    """A method whose body only passes, in a class that declares nothing abstract and that no
    class of its file overrides it in (stargan's emptied ``reset_grad``): it runs and does
    nothing, unlike a stub that raises or an abstract class's hook."""
    if any(type(small) is cst.Raise for small in walk(method.body)):
        return False
    if any(d.rsplit(".", 1)[-1] == "abstractmethod" for d in decorators(method)):
        return False
    if info.is_abstract or info.unresolved_bases:
        return False
    name = method.name.value
    return not any(
        other is not info and name in other.methods and info in other.mro()
        for other in info.ctx.classes.values()
    )


_CLIP_NAME = re.compile(r"(?i)clip")


def clears_by_hand(ctx: FileContext, func: cst.FunctionDef) -> bool:
    """A function named for clearing whose body zeroes gradients in place and steps nothing
    (improved-diffusion's ``zero_grad(model_params)``: ``param.grad.zero_()`` for each)."""
    return (
        func.name.value in CLEARING_NAMES
        and _calls_method(
            ctx,
            func,
            "clears by hand",
            lambda name, receiver, _: (
                name == "zero_" and (dotted(receiver) or "").endswith(".grad")
            ),
        )
        and not may_step(ctx, func)
    )


def clips_by_hand(ctx: FileContext, func: cst.FunctionDef) -> bool:
    """A function named for clipping whose body rescales each gradient in place
    (``p.grad.data.mul_(clip_coef)``): DINO's ``clip_gradients(model, clip)``."""
    return bool(_CLIP_NAME.search(func.name.value)) and _calls_method(
        ctx,
        func,
        "clips by hand",
        lambda name, receiver, _: (
            name in ("mul_", "div_") and ".grad." in f".{dotted(receiver) or ''}."
        ),
    )


def filters_parameters(ctx: FileContext, func: cst.FunctionDef | None, at: cst.CSTNode) -> bool:
    """Whether the statement ``at`` runs under an ``if`` that picks some parameters (by name,
    ``if "last_layer" in n:``), not one that only asks whether a gradient exists."""
    return id(at) in ctx.remember("filtered", func, lambda: _filtered(ctx, func))


def _filtered(ctx: FileContext, func: cst.FunctionDef | None) -> set[int]:
    body = func.body if func is not None else ctx.module
    out: set[int] = set()
    stack: list[tuple[cst.CSTNode, bool]] = [(body, False)]
    while stack:
        node, under = stack.pop()
        if type(node) is cst.If:
            picks = under or not _grad_exists_test(node.test)
            stack.append((node.test, under))
            stack.extend((kid, picks) for kid in (node.body, node.orelse) if kid is not None)
            continue
        if under and type(node) in (cst.SimpleStatementLine, cst.Assign):
            out.add(id(node))
        stack.extend((kid, under) for kid in kids(node))
    return out


def _grad_exists_test(test: cst.BaseExpression) -> bool:
    """``p.grad is not None`` (or ``is None``)."""
    inner, _ = without_not(test)
    return (
        type(inner) is cst.Comparison
        and (dotted(inner.left) or "").endswith(".grad")
        and all(dotted(c.comparator) == "None" for c in inner.comparisons)
    )
