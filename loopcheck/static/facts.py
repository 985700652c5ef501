"""What an assignment or a test tells the branch facts beyond its own condition: a flag set
to a literal (``cfg.use_fp16 = False``), a model's mode saved (``was_training =
model.training``), a name a call hands back unchanged (``loss, args = train(model, args)``),
and ``loss.requires_grad`` decided by the grad mode."""

from __future__ import annotations

import libcst as cst

from loopcheck.static.index import FileContext
from loopcheck.static.syntax import (
    chains_in,
    dotted,
    is_loss_name,
    params_of,
    returns_of,
    without_not,
)
from loopcheck.static.tree import walk


def handed_back(ctx: FileContext, stmt: cst.Assign) -> frozenset[str]:
    """The names a call of a function of this file rebinds to the very object they held:
    ``loss, args = train(model, args)`` where every ``return`` of ``train`` hands back its
    ``args`` parameter in that place (what is known of ``args`` stays true)."""
    value = stmt.value
    if len(stmt.targets) != 1 or type(stmt.targets[0].target) is not cst.Tuple:
        return frozenset()
    if not (type(value) is cst.Call and type(value.func) is cst.Name):
        return frozenset()
    func = ctx.functions.get(value.func.value)
    if func is None:
        return frozenset()
    elements = stmt.targets[0].target.elements
    given = {
        p.name.value: a.value
        for p, a in zip(params_of(func), value.args, strict=False)
        if a.keyword is None and not a.star
    }
    returns = [value for _, value in returns_of(func)]
    kept = set()
    for i, element in enumerate(elements):
        target = element.value
        # the one name every ``return`` puts in this place (None where one puts another thing)
        names = {_name_at(value, i, len(elements)) for value in returns}
        arg = given.get(names.pop()) if len(names) == 1 else None
        if type(target) is cst.Name and type(arg) is cst.Name and arg.value == target.value:
            kept.add(target.value)
    return frozenset(kept)


def _name_at(value: cst.BaseExpression, i: int, size: int) -> str | None:
    """The plain name at place ``i`` of a returned tuple of ``size`` values."""
    if type(value) is not cst.Tuple or len(value.elements) != size:
        return None
    element = value.elements[i].value
    return element.value if type(element) is cst.Name else None


def mode_saved(stmt: cst.CSTNode) -> tuple[str, cst.BaseExpression] | None:
    """``was_training = model.training``: the name that saves a model's mode, and the model.
    Its truth on a path is the model's mode there, so that ``if was_training: model.train()``
    restores exactly what an ``eval()`` in between changed."""
    if type(stmt) is not cst.Assign or len(stmt.targets) != 1:
        return None
    target, value = stmt.targets[0].target, stmt.value
    if type(target) is not cst.Name or type(value) is not cst.Attribute:
        return None
    if value.attr.value != "training" or dotted(value.value) is None:
        return None
    return target.value, value.value


_FLAG_VALUES = {"True": True, "False": False, "None": False}


def flag_set(stmt: cst.CSTNode) -> tuple[str, bool] | None:
    """``flag = True`` or ``cfg.use_amp = False``: the name or attribute chain set and its
    truth."""
    if type(stmt) is not cst.Assign or len(stmt.targets) != 1:
        return None
    value = stmt.value
    if type(value) is not cst.Name or value.value not in _FLAG_VALUES:
        return None
    text = dotted(stmt.targets[0].target)
    return (text, _FLAG_VALUES[value.value]) if text is not None else None


def flags_in(ctx: FileContext, loop: cst.CSTNode) -> frozenset[str]:
    """The names a loop assigns only literal truths (``updated = True`` after the step,
    ``updated = False`` after the clear): at the back edge each path still knows the value
    it set last. Once per loop."""
    return ctx.remember("flags", loop, lambda: _flags_in(loop))


def _flags_in(loop: cst.CSTNode) -> frozenset[str]:
    flags: set[str] = set()
    others: set[str] = set()
    for node in walk(loop):
        if type(node) in (cst.Assign, cst.AugAssign, cst.AnnAssign):
            found = flag_set(node)
            if found is not None:
                flags.add(found[0])
                continue
            targets = (
                [t.target for t in node.targets] if type(node) is cst.Assign else [node.target]
            )
            for target in targets:
                others |= chains_in(target)
    return frozenset(flags - others)


def init_flags(cls_init: cst.FunctionDef | None) -> list[tuple[str, bool]]:
    """The flags a class's ``__init__`` sets unconditionally (``self._updated = False``): what
    its framework's first call of a method finds."""
    if cls_init is None or type(cls_init.body) is not cst.IndentedBlock:
        return []
    found = []
    for stmt in cls_init.body.body:
        if type(stmt) is cst.SimpleStatementLine:
            for small in stmt.body:
                flag = flag_set(small)
                if flag is not None and flag[0].startswith("self."):
                    found.append(flag)
    return found


def handed_back_in(ctx: FileContext, loop: cst.CSTNode) -> frozenset[str]:
    """The names a loop rebinds only through calls that hand them back unchanged: their
    facts survive its back edge (cached per loop)."""
    return ctx.remember("handed-back", loop, lambda: _handed_back_in(ctx, loop))


def _handed_back_in(ctx: FileContext, loop: cst.CSTNode) -> frozenset[str]:
    handed: set[str] = set()
    other: set[str] = set()
    for node in walk(loop):
        if type(node) is cst.Assign:
            kept = handed_back(ctx, node)
            handed |= kept
            for target in node.targets:
                other |= _names(target.target) - kept
        elif type(node) in (cst.AugAssign, cst.AnnAssign, cst.For):
            other |= _names(node.target)
    return frozenset(handed - other)


def _names(target: cst.BaseExpression) -> set[str]:
    if type(target) is cst.Name:
        return {target.value}
    if type(target) in (cst.Tuple, cst.List):
        return {n for el in target.elements for n in _names(el.value)}
    return set()


def requires_grad_test(test: cst.BaseExpression, grad_on: bool) -> bool | None:
    """``if loss.requires_grad:`` (a backward skipped in evaluation): true where gradients
    are on, false under ``no_grad``, for a loss."""
    test, negated = without_not(test)
    if not (type(test) is cst.Attribute and test.attr.value == "requires_grad"):
        return None
    if type(test.value) is not cst.Name or not is_loss_name(test.value.value):
        return None
    return grad_on != negated


def runs_text(value: cst.BaseExpression) -> bool:
    """``exec(...)``: code read at run time, which may assign any global."""
    return type(value) is cst.Call and type(value.func) is cst.Name and value.func.value == "exec"
