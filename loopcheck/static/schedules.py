"""What a learning-rate scheduler's ``step()`` means where it is called: whether an
accelerator was handed it (a prepared scheduler skips the micro-batches that do not sync),
whether its lengths count micro-batches (stepped once per micro-batch on purpose), and whether
it is told its position (``step(cur_epoch=e, cur_step=i)``: however often it is called)."""

from __future__ import annotations

import re

import libcst as cst

from loopcheck.static.frames import Frame
from loopcheck.static.ownership import constructor_of
from loopcheck.static.syntax import called_name, dotted
from loopcheck.static.tree import walk


def in_micro_batches(frame: Frame, method: cst.BaseExpression) -> bool:
    """A scheduler built with its lengths counted in micro-batches
    (``num_training_steps=args.max_train_steps * args.gradient_accumulation_steps``):
    stepped once per micro-batch on purpose."""
    if type(method) is not cst.Attribute:
        return False
    built = constructor_of(frame, method.value)
    if built is None:
        return False
    return any(
        type(node) is cst.BinaryOperation
        and type(node.operator) is cst.Multiply
        and any(_ACCUMULATION.search(dotted(side) or "") for side in (node.left, node.right))
        for arg in built.args
        for node in walk(arg.value)
    )


def prepared(frame: Frame, method: cst.BaseExpression) -> bool:
    """Whether the receiver of ``scheduler.step`` may have been handed to an accelerator's
    ``prepare`` (or ``prepare_scheduler``): not when it is a name the running function
    (or module) assigns itself and never hands to one."""
    if type(method) is not cst.Attribute or type(method.value) is not cst.Name:
        return True
    name = method.value.value
    if name not in frame.local_values and name not in frame.tuple_values:
        return True  # a parameter, a global, an attribute: prepared, for all we know
    body = frame.func.body if frame.func is not None else frame.ctx.module
    return name in frame.ctx.remember("prepared", body, lambda: _handed_to_prepare(body))


def _handed_to_prepare(body: cst.CSTNode) -> frozenset[str]:
    """The names a body hands to ``accelerator.prepare(...)`` or its one-object variants."""
    names: set[str] = set()
    for node in walk(body):
        if type(node) is cst.Call and called_name(node) in _PREPARE_METHODS:
            names.update(n for a in node.args if (n := dotted(a.value)) is not None)
    return frozenset(names)


_ACCUMULATION = re.compile(r"(?i)accum")  # ``gradient_accumulation_steps``, ``grad_accum``
_PREPARE_METHODS = {"prepare", "prepare_scheduler", "setup"}


# what names a schedule's position, not a metric (``step(cur_epoch=e, cur_step=i)``, not
# ``step(epoch_loss)``)
_POSITION = re.compile(
    r"(?i)^((cur|current|global|num|n)_)?(epochs?|steps?|iters?|iterations?|i|it|n)$"
)


def told_its_position(call: cst.Call) -> bool:
    """A scheduler's ``step`` handed where it stands: by a keyword (``cur_step=i``,
    ``epoch=e``) or a name (``step(epoch)``) that says so."""
    for arg in call.args:
        if arg.keyword is not None and _POSITION.search(arg.keyword.value):
            return True
        if (
            arg.keyword is None
            and type(arg.value) is cst.Name
            and _POSITION.search(arg.value.value)
        ):
            return True
    return False
