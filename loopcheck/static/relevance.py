"""Which parts of a file can take part in a training step: the words that name a move, the
functions that make one or call one that does, and the branches that may run one."""

from __future__ import annotations

import libcst as cst

from loopcheck.static.tree import walk

CLEARING_NAMES = ("zero_grad", "reset_grad", "clear_grad", "zero_grads", "clear_grads")

# Words without which a function cannot take part in a training step.
MOVE_WORDS = {
    "backward",
    "step",
    "zero_grad",
    "grad",
    "clip_grad_norm_",
    "clip_grad_value_",
    "clip_grad_norm",
    "clip_grads_with_norm_",
    "clip_gradients",
    "unscale_",
    "manual_backward",
    "first_step",
    "second_step",
    *CLEARING_NAMES,
}


def two_ways(node: cst.If) -> bool:
    """Whether an ``if``/``else`` chooses between two ways of training: both branches call
    something, and one of them makes a move (``if scaler: scaler(loss, opt) else: ...``). Such
    a choice is made once for the run, so its condition is followed across iterations."""
    orelse = node.orelse.body if type(node.orelse) is cst.Else else node.orelse
    sides = [node.body, orelse]
    if not all(any(type(n) is cst.Call for n in walk(side)) for side in sides):
        return False
    return any(
        type(n) is cst.Attribute and n.attr.value in MOVE_WORDS
        for side in sides
        for n in walk(side)
    )


def move_word(node: cst.CSTNode) -> bool:
    """A name or attribute that names a move (``step`` only when called: a counter named
    ``step`` is no move, and the callers test calls on their own)."""
    kind = type(node)
    if kind is cst.Name:
        word = node.value  # type: ignore[attr-defined]
    elif kind is cst.Attribute:
        word = node.attr.value  # type: ignore[attr-defined]
    else:
        return False
    return word in MOVE_WORDS and word != "step"


def names_move(stmt: cst.If, moving: set[str]) -> bool:
    """Whether an ``if`` may run a move of a training step: it names one, or calls a function
    or method (of the linted files) that takes part in one."""
    for node in walk(stmt):
        kind = type(node)
        if move_word(node):
            return True
        if kind is cst.Call:
            func = node.func
            if type(func) is cst.Name and func.value in moving:
                return True
            if type(func) is cst.Attribute and func.attr.value in moving | {"step"}:
                return True
    return False


def relevant_functions(
    mentions: dict[int, bool],
    calls: dict[int, set[str]],
    enclosing: dict[int, int | None],
    by_name: dict[str, list[int]],
    external: set[str],
    forwards: dict[str, int],
) -> set[int]:
    """Functions that can take part in a training step: those that mention a move (directly
    or in a nested function), and those that call, by name, a function that can (of this file
    or imported from another linted file)."""
    relevant = {key for key, yes in mentions.items() if yes}
    for key in list(relevant):
        parent = enclosing.get(key)
        while parent is not None:
            relevant.add(parent)
            parent = enclosing.get(parent)
    changed = True
    while changed:
        changed = False
        names = {name for name, keys in by_name.items() if any(k in relevant for k in keys)}
        names |= external
        names |= {name for name, key in forwards.items() if key in relevant}
        for key, called in calls.items():
            if key not in relevant and called & names:
                relevant.add(key)
                changed = True
    return relevant
