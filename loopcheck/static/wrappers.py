"""AMP optimizer wrappers of the linted files, read as a whole: a class holding a GradScaler
whose methods split one step between them (``backward(loss)`` scales and backpropagates,
``clip_grad_norm(max_norm)`` clips, ``step()`` steps), each called by a framework in turn and
never in a loop of the class's own. What the methods lack together is reported where it
shows: a clip with no unscale anywhere in the class (LC301), an optimizer stepped with no
scaler step in the class (LC302), a scaler step with no update in the file (LC303), an unscale
outside the test that guards the update (LC304)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import libcst as cst

from loopcheck.static.classes import ClassInfo, self_attribute
from loopcheck.static.index import FileContext
from loopcheck.static.model import FileModel, Record
from loopcheck.static.roles import SCALER_CLASSES, Role, constructed_role, role_from_name
from loopcheck.static.syntax import called_name
from loopcheck.static.tree import kids, walk

_SCALER_METHODS = {"scale", "step", "unscale_", "update"}
# a test that decides whether this call ends an accumulation window (``if update_grad:``)
_UPDATE_TEST = re.compile(r"(?i)update|accum|sync|boundary|step")
_SCALER_NAME = re.compile(r"(?i)(^|_)scaler$")  # ``scaler``, ``loss_scaler``, ``_grad_scaler``
_CLIP = re.compile(r"^clip_grad|^clip_gradients$")  # ``clip_grad_norm_fp32`` too


@dataclass
class _Moves:
    """The calls of one class's methods, outside loops: on its scaler and its optimizer."""

    scaled_backward: bool = False  # a loss scaled by the class's scaler
    scaler_steps: list[cst.Call] = field(default_factory=list)
    clips: list[cst.Call] = field(default_factory=list)
    optimizer_steps: list[cst.Call] = field(default_factory=list)
    # each unscale and update of the scaler, with its method and the ``if`` tests around it
    unscale_calls: list[tuple[cst.Call, int, tuple[cst.If, ...]]] = field(default_factory=list)
    update_calls: list[tuple[int, tuple[cst.If, ...]]] = field(default_factory=list)
    in_loop: bool = False  # a move inside a loop of its own: the protocol reads that class


def check_wrappers(ctx: FileContext, model: FileModel) -> None:
    """Record LC301, LC302, LC303 and LC304 for the AMP wrapper classes of the file."""
    if not ctx.classes or not _names_grad_scaler(ctx):
        return  # a scaler of its own kind (fairseq's DynamicLossScaler): its own API
    text = ctx.source if ctx.source is not None else ctx.module.code
    for cls in ctx.classes.values():
        scalers = _scaler_attributes(cls)
        if not scalers:
            continue
        moves = _moves(cls, scalers)
        if not moves.scaled_backward or moves.in_loop or _runs_own_loop(cls):
            continue
        key = f"{cls.name}.{sorted(scalers)[0]}"
        if not moves.unscale_calls:
            for clip in moves.clips:
                model.add_record(Record("LC301", ctx.site(clip), key, None))
        if not moves.scaler_steps:
            for step in moves.optimizer_steps:
                model.add_record(Record("LC302", ctx.site(step), key, None))
        if not any(re.search(rf"\b{re.escape(s)}\.update\(", text) for s in scalers):
            for step in moves.scaler_steps:
                model.add_record(Record("LC303", ctx.site(step), key, None))
        for unscale in _unscaled_every_call(ctx, moves):
            model.add_record(Record("LC304", ctx.site(unscale), key, None))


def _unscaled_every_call(ctx: FileContext, moves: _Moves) -> list[cst.Call]:
    """Unscales outside the test that decides whether this call updates the scaler (a MAE or
    timm ``NativeScaler.__call__`` with ``if update_grad:``): on the micro-batches that do not
    update, they unscale again before the update (LC304)."""
    found = []
    for call, method, ifs in moves.unscale_calls:
        for other, guards in moves.update_calls:
            if other != method or not guards or guards[-1] in ifs:
                continue
            test = ctx.module.code_for_node(guards[-1].test)
            if _UPDATE_TEST.search(test):
                found.append(call)
                break
    return found


def _names_grad_scaler(ctx: FileContext) -> bool:
    """Whether the file's code (not its comments) names torch's GradScaler."""

    def names() -> bool:
        for node in walk(ctx.module):
            if type(node) is cst.Name and node.value in SCALER_CLASSES:
                return True
            if type(node) is cst.Attribute and node.attr.value in SCALER_CLASSES:
                return True
        return False

    return ctx.remember("names GradScaler", None, names)


def _runs_own_loop(cls: ClassInfo) -> bool:
    """Whether a method of the class runs a loop that calls another of its methods (a
    trainer's epoch loop calling ``self._run_batch``): the path interpreter reads that class,
    branch by branch, as the loop it is."""
    own = _own_mro(cls)
    names = {name for info in own for name in info.methods}
    for info in own:
        for method in info.methods.values():
            for loop in walk(method.body):
                if type(loop) not in (cst.For, cst.While):
                    continue
                for node in walk(loop.body):
                    if (
                        type(node) is cst.Call
                        and type(node.func) is cst.Attribute
                        and node.func.attr.value in names
                        and self_attribute(node.func) is not None
                    ):
                        return True
    return False


def _scaler_attributes(cls: ClassInfo) -> set[str]:
    """The ``self`` attributes of a class (and its bases in this file) that hold a GradScaler:
    built from one, or named as one (``self.loss_scaler``, a ``self.scaler`` property)."""
    found = set()
    for info in _own_mro(cls):
        for attr, values in info.attr_values.items():
            built = any(
                type(v) is cst.Call
                and constructed_role(info.ctx.imports.qualify(v.func) or "") is Role.SCALER
                for v, _ in values
            )
            if built or _SCALER_NAME.search(attr):
                found.add(attr)
        for method in info.methods.values():
            for node in walk(method.body):
                if type(node) is cst.Attribute and node.attr.value in _SCALER_METHODS:
                    attr = self_attribute(node.value)
                    if attr is not None and _SCALER_NAME.search(attr):
                        found.add(attr)
    return found


def _own_mro(cls: ClassInfo) -> list[ClassInfo]:
    """The class and those of its bases defined in the same file."""
    return [info for info in cls.mro() if info.ctx is cls.ctx]


def _moves(cls: ClassInfo, scalers: set[str]) -> _Moves:
    moves = _Moves()
    for info in _own_mro(cls):
        for method in info.methods.values():
            _read(method.body, _Place(scalers, moves, id(method)), False, ())
    return moves


@dataclass(frozen=True)
class _Place:
    scalers: set[str]
    moves: _Moves
    method: int


def _read(node: cst.CSTNode, at: _Place, in_loop: bool, ifs: tuple[cst.If, ...]) -> None:
    if type(node) in (cst.FunctionDef, cst.ClassDef, cst.Lambda):
        return
    looping = in_loop or type(node) in (cst.For, cst.While)
    if type(node) is cst.Call:
        _call(node, at, looping, ifs)
    if type(node) is cst.If:
        _read(node.test, at, looping, ifs)
        _read(node.body, at, looping, (*ifs, node))
        if node.orelse is not None:
            _read(node.orelse, at, looping, (*ifs, node))
        return
    for kid in kids(node):
        _read(kid, at, looping, ifs)


def _call(call: cst.Call, at: _Place, in_loop: bool, ifs: tuple[cst.If, ...]) -> None:
    scalers, moves = at.scalers, at.moves
    name = called_name(call)
    func = call.func
    receiver = func.value if type(func) is cst.Attribute else None
    on_scaler = receiver is not None and self_attribute(receiver) in scalers
    if on_scaler and name == "scale":
        # the loss scaled here, backpropagated here or by the caller it is returned to
        moves.scaled_backward = True
        moves.in_loop = moves.in_loop or in_loop
    elif on_scaler and name == "step":
        moves.scaler_steps.append(call)
    elif on_scaler and name == "unscale_":
        moves.unscale_calls.append((call, at.method, ifs))
    elif on_scaler and name == "update":
        moves.update_calls.append((at.method, ifs))
    elif _CLIP.search(name):
        moves.clips.append(call)
    elif name == "step" and receiver is not None:
        attr = self_attribute(receiver)
        if attr is not None and role_from_name(attr) is Role.OPTIMIZER:
            moves.optimizer_steps.append(call)
