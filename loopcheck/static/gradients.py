"""What code does to gradients by hand, outside the optimizers: rescaling them (``p.grad.div_``),
changing them in place, handing them to a collective, keeping them (stored, compared), or
asserting that they are clear."""

from __future__ import annotations

import re

import libcst as cst

from loopcheck.static.index import FileContext
from loopcheck.static.syntax import called_name, dotted
from loopcheck.static.tree import kids, walk

_RESCALES = {"div_", "mul_"}


def hands_grad(call: cst.Call) -> bool:
    """``dist.all_reduce(p.grad)``, ``reduce_scatter(p.grad.data, ...)``: gradients handed to a
    collective, which sums (or averages) them in place across processes."""
    name = (dotted(call.func) or "").rsplit(".", 1)[-1]
    if "reduce" not in name and name not in ("broadcast", "all_gather"):
        return False
    return any((dotted(arg.value) or "").endswith((".grad", ".grad.data")) for arg in call.args)


def keeps_grad(ctx: FileContext, expr: cst.BaseExpression) -> bool:
    """Whether an expression keeps gradients or hands them on by hand: ``{k: p.grad ...}``,
    ``grads.append(p.grad)``, ``compare(p.grad)`` (compared, stored, exchanged: the author's
    business), as opposed to reading them through torch (``torch.norm(p.grad)``,
    ``p.grad.detach()``, ``p.grad is None``: a norm for the log). Cached per expression."""
    return ctx.remember("keeps-grad", expr, lambda: _keeps_grad(ctx, expr))


def _keeps_grad(ctx: FileContext, expr: cst.BaseExpression) -> bool:
    stack: list[tuple[cst.CSTNode, cst.CSTNode | None]] = [(expr, None)]
    while stack:
        node, parent = stack.pop()
        if type(node) is cst.Attribute and node.attr.value == "grad":
            if type(parent) is cst.Arg:
                return True  # handed to a call that is not torch's (see below)
            if type(parent) in _KEEPING:
                return True
        if type(node) is cst.Call and manual_update(node):
            continue  # ``p.data.add_(p.grad, alpha=-lr)``: applied, not kept
        if type(node) is cst.Call and reduces_grad(node):
            continue  # ``accelerator.reduce(p.grad, reduction="mean")``: averaged, not kept
        if type(node) is cst.Call:
            qual = ctx.imports.qualify(node.func) if type(node.func) in _DOTTED else None
            if qual is not None and qual.startswith("torch."):
                # a torch function reads its arguments: only look further inside them
                stack.extend((kid, node) for arg in node.args for kid in kids(arg))
                stack.append((node.func, node))
                continue
        stack.extend((kid, node) for kid in kids(node))
    return False


def manual_update(call: cst.Call) -> bool:
    """``p.data.add_(p.grad, alpha=-lr)``, ``p.sub_(lr * p.grad)``: a parameter updated in place
    from its own gradient (a step written by hand)."""
    func = call.func
    if type(func) is not cst.Attribute or func.attr.value not in _UPDATES:
        return False
    receiver = func.value
    if type(receiver) is cst.Attribute and receiver.attr.value == "data":
        receiver = receiver.value
    param = dotted(receiver)
    grads = [n for n in walk(call) if type(n) is cst.Attribute and n.attr.value == "grad"]
    return param is not None and bool(grads) and all(dotted(g.value) == param for g in grads)


_UPDATES = {"add_", "sub_", "addcdiv_", "addcmul_"}
_DOTTED = (cst.Name, cst.Attribute)
# where a gradient is kept: a container's element, a comprehension's element or value
_KEEPING = (
    cst.Element, cst.StarredElement, cst.DictElement, cst.ListComp, cst.SetComp,
    cst.DictComp, cst.GeneratorExp,
)  # fmt: skip


def changes_grad(call: cst.Call) -> bool:
    """``p.grad.zero_()``, ``p.grad.data.add_(noise)``: a gradient changed in place (an
    in-place method, named with a trailing underscore)."""
    method = _grad_method(call)
    return method is not None and method.endswith("_")


def rescales_grad(call: cst.Call) -> bool:
    """``p.grad.div_(n)``, ``p.grad.data.mul_(s)``: a gradient rescaled in place; or a helper
    named for it, handed a factor (torchtune's ``scale_grads(model, 1 / num_tokens)``)."""
    if _grad_method(call) in _RESCALES:
        return True
    # a function handed what to rescale and the factor; a method (``optim.multiply_grads(c)``)
    # handed the factor
    handed = 1 if type(call.func) is cst.Attribute else 2
    return len(call.args) >= handed and bool(_RESCALING_HELPER.match(called_name(call)))


def scaled_step(call: cst.Call) -> bool:
    """``optimizer.step(scale=c)``, ``scaler.step(optimizer, scale=c)``: an optimizer (apex's
    fused Adam) that divides the gradients by ``scale`` as it applies them."""
    func = call.func
    return (
        type(func) is cst.Attribute
        and func.attr.value == "step"
        and any(a.keyword is not None and a.keyword.value == "scale" for a in call.args)
    )


# ``scale_grads``, ``scale_grads_``, ``rescale_gradients``, ``normalize_grads``,
# ``multiply_grads``
_RESCALING_HELPER = re.compile(
    r"(?i)(re)?scale_grad(ient)?s?_?$|normali[sz]e_grad(ient)?s?_?$|multiply_grad(ient)?s?_?$"
)


def _grad_method(call: cst.Call) -> str | None:
    """The method a call runs on a gradient (``p.grad.div_``, ``p.grad.data.mul_``), if any."""
    func = call.func
    if type(func) is not cst.Attribute:
        return None
    inner = func.value
    if type(inner) is cst.Attribute and inner.attr.value == "data":
        inner = inner.value
    return func.attr.value if type(inner) is cst.Attribute and inner.attr.value == "grad" else None


def asserts_no_grad(test: cst.BaseExpression) -> bool:
    for node in walk(test):
        if type(node) is cst.Comparison and type(node.left) is cst.Attribute:
            if node.left.attr.value != "grad":
                continue
            for comp in node.comparisons:
                if type(comp.operator) is cst.Is and dotted(comp.comparator) == "None":
                    return True
    return False


_AVERAGE = re.compile(r"(?i)(^|_)(average|avg|mean)($|_)")
_REDUCE = re.compile(r"(?i)(^|_)(all_?reduce|reduce|sync)($|_)")


def reduces_grad(call: cst.Call) -> bool:
    """``accelerator.reduce(p.grad, reduction="mean")``, ``average_gradients(p.grad)``: a
    gradient averaged across processes (a call named for it, or a reduction asked for a mean,
    handed a ``.grad``). A sum (``dist.all_reduce(p.grad)``) scales them: not this."""
    name = called_name(call)
    if not any((dotted(arg.value) or "").endswith(".grad") for arg in call.args):
        return False
    if _AVERAGE.search(name):
        return True
    return bool(_REDUCE.search(name)) and any(
        arg.keyword is not None
        and arg.keyword.value in ("reduction", "op")
        and _AVERAGE.search((dotted(arg.value) or _string_value(arg.value)).rsplit(".", 1)[-1])
        for arg in call.args
    )


def _string_value(node: cst.BaseExpression) -> str:
    """The value of a plain string literal (``"mean"``), else empty."""
    if type(node) is cst.SimpleString and isinstance(node.evaluated_value, str):
        return node.evaluated_value
    return ""


def sanitized_grads(ctx: FileContext, expr: cst.BaseExpression) -> frozenset[int]:
    """The ``.grad`` reads of an expression that change the gradient in place and leave it to
    be applied: the receiver of an in-place method other than a rescale (``p.grad.clamp_(-1,
    1)``, ``p.grad.data.nan_to_num_()``) or the ``out=`` of a torch function
    (``torch.nan_to_num(p.grad, out=p.grad)``). Cached per expression."""
    return ctx.remember("sanitized-grads", expr, lambda: _sanitized(ctx, expr))


def _sanitized(ctx: FileContext, expr: cst.BaseExpression) -> frozenset[int]:
    found: set[int] = set()
    for node in walk(expr):
        if type(node) is not cst.Call:
            continue
        method = _grad_method(node)
        if method is not None and method in _SANITIZING:
            found |= {id(n) for n in walk(node.func) if _is_grad(n)}
            continue
        qual = ctx.imports.qualify(node.func) if type(node.func) in _DOTTED else None
        if qual is None or not qual.startswith("torch."):
            continue
        out = next((a.value for a in node.args if a.keyword and a.keyword.value == "out"), None)
        if out is not None and _is_grad(out):
            found |= {id(n) for a in node.args for n in walk(a.value) if _is_grad(n)}
    return frozenset(found)


def holds_grad(expr: cst.BaseExpression) -> bool:
    """``p.grad.view(-1)``, ``p.grad.data.clone()``: an expression whose value is (a view or a
    copy of) a gradient, not a number read from it."""
    while True:
        if _is_grad(expr):
            return True
        if type(expr) is cst.Attribute and expr.attr.value == "data":
            expr = expr.value
        elif (
            type(expr) is cst.Call
            and type(expr.func) is cst.Attribute
            and (expr.func.attr.value in _VIEWS)
        ):
            expr = expr.func.value
        else:
            return False


# methods returning a view or a copy of the tensor they are called on
_VIEWS = {"view", "reshape", "flatten", "clone", "detach", "contiguous", "float", "to"}


def _is_grad(node: cst.CSTNode) -> bool:
    return type(node) is cst.Attribute and node.attr.value == "grad"


# in-place methods that bound or clean a gradient, leaving it to be applied
_SANITIZING = {"clamp_", "clip_", "nan_to_num_", "clamp_min_", "clamp_max_"}


def inspected_grads(ctx: FileContext, expr: cst.BaseExpression) -> frozenset[int]:
    """The ``.grad`` reads of an expression that only inspect the gradient (``p.grad is not
    None``, ``p.grad.norm()``, ``torch.isfinite(p.grad)``): no update by hand can hide in
    them. Cached per expression."""
    return ctx.remember("inspected-grads", expr, lambda: _inspected(ctx, expr))


def _inspected(ctx: FileContext, expr: cst.BaseExpression) -> frozenset[int]:
    found: set[int] = set()
    stack: list[tuple[cst.CSTNode, tuple[cst.CSTNode, ...]]] = [(expr, ())]
    while stack:
        node, up = stack.pop()
        if type(node) is cst.Attribute and node.attr.value == "grad" and _inspects(ctx, node, up):
            found.add(id(node))
        stack.extend((kid, (node, *up[:3])) for kid in kids(node))
    return frozenset(found)


def _inspects(ctx: FileContext, node: cst.Attribute, up: tuple[cst.CSTNode, ...]) -> bool:
    """Whether a ``.grad`` read, seen under its ancestors ``up`` (nearest first), inspects."""
    parent = up[0] if up else None
    if type(parent) in (cst.Comparison, cst.ComparisonTarget):
        return True  # ``p.grad is None``
    rest = up
    while rest and type(rest[0]) is cst.Attribute and rest[0].attr.value == "data":
        rest = rest[1:]  # ``p.grad.data.norm()``
    if len(rest) >= 2 and type(rest[0]) is cst.Attribute and type(rest[1]) is cst.Call:
        method = rest[0].attr.value
        if method not in _INSPECTING_METHODS or rest[1].func is not rest[0]:
            return False
        if method in _COPYING_METHODS:
            # ``p.grad.detach().norm()`` inspects; a bare copy is handed on to be used by
            # hand (an A3C worker's ``[p.grad.clone() for p in params]`` queued for the
            # process that steps the shared model)
            after = rest[2:]
            return bool(after) and (
                type(after[0]) in (cst.Comparison, cst.ComparisonTarget)
                or type(after[0]) is cst.Attribute
                and after[0].attr.value in _INSPECTING_METHODS - _COPYING_METHODS
            )
        return True
    if len(up) >= 2 and type(parent) is cst.Arg and type(up[1]) is cst.Call:
        if reduces_grad(up[1]):
            return True  # ``accelerator.reduce(p.grad, reduction="mean")``: averaged
        func = up[1].func
        qual = ctx.imports.qualify(func) if type(func) in _DOTTED else None
        return (
            bool(qual)
            and qual.startswith("torch.")
            and (qual.rsplit(".", 1)[-1] in _INSPECTING_METHODS | _INSPECTING_FUNCTIONS)
        )
    return False


_INSPECTING_METHODS = frozenset(
    {"norm", "abs", "sum", "mean", "max", "min", "item", "isfinite", "isnan", "isinf", "all"}
    | {"any", "pow", "square", "numel", "size", "float", "detach", "clone", "cpu", "std", "var"}
)
_COPYING_METHODS = frozenset({"detach", "clone", "cpu", "float"})
_INSPECTING_FUNCTIONS = frozenset({"vector_norm", "matrix_norm", "stack", "count_nonzero"})
