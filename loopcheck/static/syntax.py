"""Questions about libcst syntax alone: no roles, no paths, no state (names, calls, assignments,
loop counters, literal values)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import libcst as cst

from loopcheck.static.tree import is_expression, kids

# Values that are plain data, whatever the variable they are stored in is called.
DATA_NODES = (
    cst.List,
    cst.Dict,
    cst.Tuple,
    cst.Set,
    cst.ListComp,
    cst.DictComp,
    cst.SetComp,
    cst.GeneratorExp,
    cst.SimpleString,
    cst.ConcatenatedString,
    cst.FormattedString,
    cst.Integer,
    cst.Float,
    cst.BinaryOperation,
    cst.Comparison,
)

# Calls that return settings or data, never an optimizer, whatever the variable is called.
DATA_CALLS = re.compile(
    r"^(parse_args|parse_known_args|get_args|get_parser|parse|load|loads|safe_load|full_load"
    r"|load_config|get_config|from_yaml|from_json|to_container|create|to_dict|Namespace|EasyDict"
    r"|edict|dict|defaultdict|OrderedDict|SimpleNamespace|vars|deepcopy|copy|getattr_or_none)$"
)

_LITERALS: dict[str, object] = {"True": True, "False": False, "None": None}


def dotted(expr: cst.CSTNode | None) -> str | None:
    """``a.b.c`` for a chain of names and attributes; None for anything else."""
    parts: list[str] = []
    while type(expr) is cst.Attribute:
        parts.append(expr.attr.value)
        expr = expr.value
    if type(expr) is not cst.Name:
        return None
    parts.append(expr.value)
    return ".".join(reversed(parts))


def returns_of(func: cst.FunctionDef) -> list[tuple[cst.CSTNode, cst.BaseExpression]]:
    """The values a function returns, each with the statement line that returns it."""
    out: list[tuple[cst.CSTNode, cst.BaseExpression]] = []
    stack: list[cst.CSTNode] = [func.body]
    while stack:
        node = stack.pop()
        if type(node) in (cst.FunctionDef, cst.ClassDef, cst.Lambda):
            continue
        if type(node) in (cst.SimpleStatementLine, cst.SimpleStatementSuite):
            for small in node.body:
                if type(small) is cst.Return and small.value is not None:
                    out.append((node, small.value))
            continue
        if not is_expression(node):
            stack.extend(kids(node))
    return out


def contains(node: cst.CSTNode, kind: type) -> bool:
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, kind):
            return True
        stack.extend(kids(n))
    return False


def names_in(node: cst.CSTNode) -> set[str]:
    out: set[str] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if type(n) is cst.Name:
            out.add(n.value)
        stack.extend(kids(n))
    return out


def chains_in(node: cst.CSTNode) -> set[str]:
    """The names and attribute chains an expression mentions, each as long as it goes:
    ``self.cfg.flag and x`` gives ``self.cfg.flag`` and ``x``. A fact about a condition is
    forgotten when one of its chains is assigned (``self.step = 0`` does not forget
    ``self.train_agent``)."""
    out: set[str] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if type(n) in (cst.Name, cst.Attribute):
            chain = dotted(n)
            if chain is not None:
                out.add(chain)
                continue
        stack.extend(kids(n))
    return out


def method_calls(node: cst.CSTNode) -> dict[str, list[cst.Call]]:
    """The calls of a method under ``node`` (``opt.step()``, ``x.y.zero_grad()``), by the
    method's name, in no particular order."""
    out: dict[str, list[cst.Call]] = {}
    stack = [node]
    while stack:
        current = stack.pop()
        if type(current) is cst.Call and type(current.func) is cst.Attribute:
            out.setdefault(current.func.attr.value, []).append(current)
        stack.extend(kids(current))
    return out


def assignments(body: cst.CSTNode) -> Iterator[tuple[cst.BaseExpression, cst.BaseExpression]]:
    """(target, value) pairs of the plain assignments in a body, nested defs excluded."""
    stack: list[cst.CSTNode] = [body]
    while stack:
        node = stack.pop()
        if type(node) in (cst.FunctionDef, cst.ClassDef, cst.Lambda):
            continue
        if type(node) is cst.Assign:
            for t in node.targets:
                yield t.target, node.value
        elif type(node) is cst.AnnAssign and node.value is not None:
            yield node.target, node.value
        elif type(node) is cst.WithItem and node.asname is not None:
            yield from _with_targets(node.asname.name, node.item)
        elif is_expression(node):
            continue
        stack.extend(kids(node))


def _with_targets(
    target: cst.BaseExpression, item: cst.BaseExpression
) -> Iterator[tuple[cst.BaseExpression, cst.BaseExpression]]:
    """``with ctx(...) as name``: the name holds what the context gives, known by the call.
    higher's ``innerloop_ctx(model, opt) as (fmodel, diffopt)`` gives a functional view of the
    model (its parameters, updated differentiably) and an optimizer that never touches
    ``.grad``: the view is the model itself."""
    if type(target) is cst.Name:
        yield target, item
    elif type(target) in (cst.Tuple, cst.List) and type(item) is cst.Call:
        elements = [e.value for e in target.elements]
        if called_name(item) == "innerloop_ctx" and item.args and elements:
            yield elements[0], item.args[0].value
            elements = elements[1:]
        for element in elements:
            if type(element) is cst.Name:
                yield element, item


def local_functions(
    name: str, defs: dict[str, cst.FunctionDef], values: dict[str, list[cst.BaseExpression]]
) -> list[cst.FunctionDef]:
    """The local functions a name calls: the one of that name, or those the name is bound to
    on every branch that binds it (``backward_pass = amp_backward_pass`` or
    ``hvd_amp_backward_pass``); empty when it holds anything else."""
    if name in defs:
        return [defs[name]]
    bound = values.get(name, ())
    if not bound or not all(type(v) is cst.Name and v.value in defs for v in bound):
        return []
    return [defs[n] for n in dict.fromkeys(v.value for v in bound)]  # type: ignore[attr-defined]


def called_name(call: cst.Call) -> str:
    """The last name of what a call calls (``y.sum().backward()``: ``backward``; ``f(x)``:
    ``f``), empty when it calls something else (``fns[0](x)``)."""
    func = call.func
    if type(func) is cst.Attribute:
        return func.attr.value
    return func.value if type(func) is cst.Name else ""


def call_args(call: cst.Call) -> tuple[list[cst.BaseExpression], dict[str, cst.BaseExpression]]:
    positional: list[cst.BaseExpression] = []
    keywords: dict[str, cst.BaseExpression] = {}
    for arg in call.args:
        if arg.keyword is not None:
            keywords[arg.keyword.value] = arg.value
        elif not arg.star:
            positional.append(arg.value)
    return positional, keywords


def nested_defs(body: cst.CSTNode) -> Iterator[cst.FunctionDef]:
    stack: list[cst.CSTNode] = list(kids(body))
    while stack:
        node = stack.pop()
        if type(node) is cst.FunctionDef:
            yield node
            continue
        if type(node) is cst.ClassDef or is_expression(node):
            continue
        stack.extend(kids(node))


def roots_of(expr: cst.CSTNode) -> Iterator[cst.BaseExpression]:
    """The receivers at the bottom of attribute and call chains inside an expression:
    ``model.encoder.parameters()`` gives ``model``; ``self.model.parameters()`` gives
    ``self.model``."""
    stack = [expr]
    while stack:
        node = stack.pop()
        if type(node) is cst.Attribute:
            if type(node.value) is cst.Name and node.value.value == "self":
                yield node
                continue
            stack.append(node.value)
            continue
        if type(node) is cst.Name:
            yield node
            continue
        if type(node) is cst.Call:
            stack.append(node.func)
            stack.extend(a.value for a in node.args)
            continue
        stack.extend(kids(node))


def evaluation_order(expr: cst.CSTNode) -> list[cst.CSTNode]:
    """Calls and ``.grad`` reads inside an expression, innermost first, left to right; lambdas
    and nested definitions are not evaluated here. ``autograd.grad(...)`` is a call, not a read
    of ``.grad``."""
    out: list[cst.CSTNode] = []

    def visit(node: cst.CSTNode) -> None:
        if type(node) in (cst.Lambda, cst.FunctionDef, cst.ClassDef):
            return
        if type(node) is cst.Call:
            func = node.func
            if type(func) is cst.Attribute and func.attr.value == "grad":
                visit(func.value)  # ``torch.autograd.grad`` / ``x.grad(...)``: not a .grad read
            else:
                visit(func)
            for arg in node.args:
                visit(arg.value)
            out.append(node)
            return
        for child in kids(node):
            visit(child)
        if type(node) is cst.Attribute and node.attr.value == "grad":
            out.append(node)

    visit(expr)
    return out


def loop_assigned(stmt: cst.CSTNode) -> set[str]:
    """Names assigned anywhere in a loop body: their branch facts do not survive the back edge."""
    body = stmt.body if type(stmt) in (cst.For, cst.While, cst.FunctionDef) else stmt
    names: set[str] = set()
    for target, _ in assignments(body):
        names |= chains_in(target)
    stack: list[cst.CSTNode] = [body]
    while stack:
        node = stack.pop()
        if type(node) is cst.AugAssign:
            names |= chains_in(node.target)
        elif type(node) is cst.For:
            names |= chains_in(node.target)
        if not is_expression(node):
            stack.extend(kids(node))
    return names


def is_increment(stmt: cst.AugAssign) -> bool:
    return (
        type(stmt.target) is cst.Name
        and type(stmt.operator) is cst.AddAssign
        and type(stmt.value) is cst.Integer
        and stmt.value.value == "1"
    )


def incremented(body: cst.CSTNode) -> set[str]:
    """Names a loop body increments by one (``step += 1``)."""
    out: set[str] = set()
    stack = [body]
    while stack:
        node = stack.pop()
        if type(node) is cst.AugAssign and is_increment(node):
            out.add(node.target.value)  # type: ignore[union-attr]
        elif type(node) in (cst.FunctionDef, cst.ClassDef) or is_expression(node):
            continue
        stack.extend(kids(node))
    return out


def ends_with_continue(stmt: cst.CSTNode) -> bool:
    """A line (or the one-line body of ``if x: continue``) that ends with ``continue``."""
    return (
        type(stmt) in (cst.SimpleStatementLine, cst.SimpleStatementSuite)
        and bool(stmt.body)
        and type(stmt.body[-1]) is cst.Continue
    )


def is_grad_of(expr: cst.BaseExpression, var: str) -> bool:
    return (
        type(expr) is cst.Attribute
        and expr.attr.value == "grad"
        and type(expr.value) is cst.Name
        and expr.value.value == var
    )


def body_clears(body: cst.CSTNode, var: str) -> bool:
    """Whether a loop body sets ``var.grad`` to None or zeroes it (not rewriting it:
    ``p.grad = accelerator.reduce(p.grad)`` keeps what piled up)."""
    stack = [body]
    while stack:
        node = stack.pop()
        if type(node) is cst.Assign and _no_gradient(node.value):
            for t in node.targets:
                if is_grad_of(t.target, var):
                    return True
        if type(node) is cst.Call and type(node.func) is cst.Attribute:
            if node.func.attr.value == "zero_":
                inner = node.func.value
                if type(inner) is cst.Attribute and inner.attr.value == "data":
                    inner = inner.value
                if is_grad_of(inner, var):
                    return True
        stack.extend(kids(node))
    return False


def _no_gradient(value: cst.BaseExpression) -> bool:
    """``None``, or a tensor of zeros (``torch.zeros_like(p)``)."""
    if type(value) is cst.Name:
        return value.value == "None"
    return type(value) is cst.Call and called_name(value) in ("zeros_like", "zeros")


def is_true(test: cst.BaseExpression) -> bool:
    return (type(test) is cst.Name and test.value == "True") or (
        type(test) is cst.Integer and test.value != "0"
    )


def literal(expr: cst.BaseExpression | None) -> tuple[bool, object]:
    """(is a literal, its value) for True/False/None and numbers."""
    if type(expr) is cst.Name and expr.value in _LITERALS:
        return True, _LITERALS[expr.value]
    if type(expr) in (cst.Integer, cst.Float):
        return True, float(expr.value.replace("_", "")) if "." in expr.value else 1
    return False, None


def params_of(func: cst.FunctionDef | cst.Lambda) -> list[cst.Param]:
    p = func.params
    return [*p.posonly_params, *p.params]


def all_params(func: cst.FunctionDef | cst.Lambda) -> list[cst.Param]:
    p = func.params
    return [*p.posonly_params, *p.params, *p.kwonly_params]


def is_abstract(func: cst.FunctionDef) -> bool:
    """A body that only documents, passes or raises: an abstract method to be overridden."""
    body = func.body
    if type(body) is not cst.IndentedBlock:
        return False
    for stmt in body.body:
        if type(stmt) is not cst.SimpleStatementLine:
            return False
        for small in stmt.body:
            if type(small) in (cst.Pass, cst.Raise):
                continue
            if type(small) is cst.Expr and isinstance(
                small.value, (cst.SimpleString, cst.ConcatenatedString, cst.Ellipsis)
            ):
                continue
            return False
    return True


def turns_grad_off(name: str) -> bool:
    """Whether a context manager or decorator named so runs with gradients off:
    ``torch.no_grad``, ``torch.inference_mode`` and projects' own wrappers of them
    (YOLOv5's ``smart_inference_mode``)."""
    return name.rsplit(".", 1)[-1].endswith(("no_grad", "inference_mode"))


def decorators(func: cst.FunctionDef) -> Iterable[str]:
    for deco in func.decorators:
        node = deco.decorator
        if type(node) is cst.Call:
            node = node.func
        name = dotted(node)
        if name is not None:
            yield name


def grad_context(item: cst.BaseExpression) -> bool | None:
    """What a ``with`` item does to autograd: False for ``torch.no_grad()``,
    ``torch.inference_mode()``, ``torch.set_grad_enabled(False)``; True for
    ``torch.enable_grad()``, ``set_grad_enabled(True)``; None for anything else."""
    node = item.func if type(item) is cst.Call else item
    last = (dotted(node) or "").rsplit(".", 1)[-1]
    if turns_grad_off(last):
        if type(item) is cst.Call and last == "inference_mode" and item.args:
            flag = item.args[0].value
            return not (type(flag) is cst.Name and flag.value == "False")
        return False
    if last == "enable_grad":
        return True
    if last == "set_grad_enabled" and type(item) is cst.Call and item.args:
        flag = item.args[0].value
        if type(flag) is cst.Name and flag.value in {"True", "False"}:
            return flag.value == "True"
    return None


# The namespaces settings are read from: ``cfg.optimizer_in_bwd`` is a setting, whatever its
# name says.
_SETTINGS_ROOT = re.compile(r"(?i)^(self\.)?(args|cfg|config|conf|hparams|options|flags|settings)$")


def is_data(value: cst.BaseExpression) -> bool:
    """Plain data, whatever the name it is stored in says (a list, ``parse_args()``, a literal
    flag, a setting read from a configuration: ``cfg.optimizer_in_bwd``)."""
    if isinstance(value, DATA_NODES):
        return True
    kind = type(value)
    if kind is cst.Call:
        name = dotted(value.func)
        return name is not None and bool(DATA_CALLS.match(name.rsplit(".", 1)[-1]))
    if kind is cst.Name:
        return value.value in _LITERALS
    if kind is cst.Attribute:
        base = dotted(value.value)
        return base is not None and bool(_SETTINGS_ROOT.match(base))
    return False


_LOSS_NAME = re.compile(r"(?i)^(\w+_)?loss(_\w+)?$")


def is_loss_name(name: str) -> bool:
    """``loss``, ``total_loss``, ``loss_g``: a name that holds a loss."""
    return bool(_LOSS_NAME.match(name))


def without_not(test: cst.BaseExpression) -> tuple[cst.BaseExpression, bool]:
    """A condition without its leading ``not``s, and whether they negate it."""
    negated = False
    while type(test) is cst.UnaryOperation and type(test.operator) is cst.Not:
        test, negated = test.expression, not negated
    return test, negated


def negated_if(expr: cst.BaseExpression, negate: bool) -> cst.BaseExpression:
    """``not expr`` when ``negate``, else ``expr``: the inverse of :func:`without_not`."""
    return cst.UnaryOperation(operator=cst.Not(), expression=expr) if negate else expr


def literal_index(subscript: cst.Subscript) -> object:
    """The constant of ``x[0]`` or ``x["key"]`` (None: a slice, several, or not a constant)."""
    if len(subscript.slice) != 1:
        return None
    index = subscript.slice[0].slice
    if type(index) is not cst.Index:
        return None
    value = index.value
    if type(value) is cst.Integer:
        return int(value.evaluated_value)
    if type(value) is cst.SimpleString:
        return value.evaluated_value
    return None


def by_zero(call: cst.Call) -> bool:
    """A call given a literal zero (``p.grad.mul_(0)``)."""
    return any(
        type(a.value) in (cst.Integer, cst.Float) and not a.value.evaluated_value for a in call.args
    )


def none_test(test: cst.BaseExpression) -> bool:
    """``grad_norm is not None``: whether a value was computed (a helper stepped), not what
    the gradients hold."""
    inner, _ = without_not(test)
    return (
        type(inner) is cst.Comparison
        and all(type(c.operator) in (cst.Is, cst.IsNot) for c in inner.comparisons)
        and all(dotted(c.comparator) == "None" for c in inner.comparisons)
    )


def engine_names(calls: dict[str, list[cst.Call]]) -> frozenset[str]:
    """The names that a body's method calls (:func:`method_calls`) both hand a loss to
    (``x.backward(loss)``) and step (``x.step()``): engines, used as such."""

    def receivers(method: str, handed_a_loss: bool) -> set[str]:
        return {
            call.func.value.value  # type: ignore[attr-defined]
            for call in calls.get(method, ())
            if type(call.func.value) is cst.Name  # type: ignore[attr-defined]
            and (
                bool(call.args) and call.args[0].keyword is None if handed_a_loss else not call.args
            )
        }

    return frozenset(receivers("backward", True) & receivers("step", False))
