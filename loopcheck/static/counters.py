"""What a ``for`` loop walks: the counter that grows by one per iteration (through a progress
bar or a logger too), the range it counts, and the iterable each name of a zipped target walks."""

from __future__ import annotations

import re

import libcst as cst

from loopcheck.static.syntax import dotted


def counter_of(stmt: cst.For | cst.While) -> str | None:
    """The loop variable that grows by one per iteration: ``for i in range(...)``,
    ``for i, x in enumerate(...)``, or one that cycles through a range beside the data
    (``for batch, k in zip(loader, cycle(range(1, n + 1)))``)."""
    if type(stmt) is not cst.For or type(stmt.iter) is not cst.Call:
        return None
    func = dotted(counted_iter(stmt.iter).func)
    target = stmt.target
    if func == "range" and type(target) is cst.Name:
        return target.value
    if func == "enumerate" and type(target) is cst.Tuple and target.elements:
        first = target.elements[0].value
        return first.value if type(first) is cst.Name else None
    cycled = cycled_range(stmt)
    return cycled[0] if cycled is not None else None


# Iterators handed a range that yield its values unchanged (progress bars, loggers)
_PASS_THROUGH = re.compile(r"^(tqdm|log_every|track|progress(_?bar)?|ProgressBar|iter)$")


def counted_iter(call: cst.Call) -> cst.Call:
    """The ``range``/``enumerate`` call a loop really counts with: ``tqdm(range(n))`` and
    ``metric_logger.log_every(range(n), freq)`` yield what their range does; ``trange(a, b)``
    is ``range(a, b)``."""
    name = (dotted(call.func) or "").rpartition(".")[2]
    if name == "trange":
        return call.with_changes(func=cst.Name("range"))
    first = call.args[0].value if call.args and call.args[0].keyword is None else None
    if (
        _PASS_THROUGH.match(name)
        and type(first) is cst.Call
        and dotted(first.func) in ("range", "enumerate")
    ):
        return first
    return call


def zipped_targets(stmt: cst.For) -> list[tuple[str, cst.BaseExpression]]:
    """``for opt, sched in zip(optimizers, schedulers)``: each plain name of the target with
    the iterable it walks."""
    it, target = stmt.iter, stmt.target
    if _items_pair(it, target):
        # ``for name, opt in optimizers.items()``: ``opt`` walks the dict's values
        value = target.elements[1].value  # type: ignore[attr-defined]
        values = cst.Call(func=cst.Attribute(it.func.value, cst.Name("values")))  # type: ignore[attr-defined]
        return [(value.value, values)] if type(value) is cst.Name else []
    if not (type(it) is cst.Call and dotted(it.func) == "zip" and type(target) is cst.Tuple):
        return []
    if len(target.elements) != len(it.args) or any(a.star or a.keyword for a in it.args):
        return []
    return [
        (element.value.value, arg.value)
        for element, arg in zip(target.elements, it.args, strict=True)
        if type(element.value) is cst.Name
    ]


def _items_pair(it: cst.BaseExpression, target: cst.BaseExpression) -> bool:
    return (
        type(it) is cst.Call
        and type(it.func) is cst.Attribute
        and it.func.attr.value == "items"
        and not it.args
        and type(target) is cst.Tuple
        and len(target.elements) == 2
    )


def cycled_range(stmt: cst.For) -> tuple[str, cst.Call] | None:
    """``for batch, k in zip(loader, cycle(range(...)))``: ``k`` and its range. The counter
    numbers the micro-batches of each accumulation window over and over."""
    for name, value in zipped_targets(stmt):
        if (
            type(value) is cst.Call
            and (dotted(value.func) or "").rpartition(".")[2] == "cycle"
            and len(value.args) == 1
            and type(value.args[0].value) is cst.Call
            and dotted(value.args[0].value.func) == "range"
        ):
            return name, value.args[0].value
    return None


def range_length(call: cst.Call) -> tuple[cst.BaseExpression, int] | None:
    """The length and first value of ``range(n)``, ``range(0, n)`` or ``range(1, n + 1)``."""
    args = [a.value for a in call.args]
    if len(args) == 1:
        return args[0], 0
    if len(args) != 2 or type(args[0]) is not cst.Integer:
        return None
    start = int(args[0].evaluated_value)
    if start == 0:
        return args[1], 0
    end = args[1]
    if (
        type(end) is cst.BinaryOperation
        and type(end.operator) is cst.Add
        and type(end.right) is cst.Integer
        and int(end.right.evaluated_value) == start
    ):
        return end.left, start
    return None
