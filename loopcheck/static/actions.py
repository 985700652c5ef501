"""What one call or statement does to the optimizers: the moves of the PyTorch, Accelerate,
Lightning, DeepSpeed and GradScaler APIs, turned into actions for the path interpreter."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import libcst as cst

from loopcheck.protocol import Event, Move
from loopcheck.static.dataflow import Origin, origin
from loopcheck.static.index import CLEARING_NAMES, ClassInfo, FileContext
from loopcheck.static.model import Site
from loopcheck.static.roles import Obj, Role, is_model_method
from loopcheck.static.syntax import (
    body_clears,
    call_args,
    dotted,
    is_abstract,
    literal,
    names_in,
    params_of,
    roots_of,
)
from loopcheck.static.tree import is_expression, kids, walk

if TYPE_CHECKING:
    from loopcheck.static.frames import Frame

MAX_FOLLOWS_PER_ROOT = 120  # past it, calls are treated as calls we cannot see into

_CLIP_FUNCTIONS = {
    "clip_grad_norm_",
    "clip_grad_norm",
    "clip_grad_value_",
    "clip_grads_with_norm_",
}
_OPTIMIZER_HARMLESS = {
    "state_dict",
    "load_state_dict",
    "add_param_group",
    "register_step_pre_hook",
    "register_step_post_hook",
    "register_state_dict_pre_hook",
    "register_load_state_dict_post_hook",
    "param_groups",
    "train",
    "eval",
    "values",
    "items",
    "keys",
    "get",
}
_MODEL_HARMLESS = {
    "parameters",
    "named_parameters",
    "buffers",
    "named_buffers",
    "modules",
    "named_modules",
    "children",
    "state_dict",
    "load_state_dict",
    "apply",
    "register_forward_hook",
    "register_forward_pre_hook",
    "register_full_backward_hook",
    "requires_grad_",
    "save_pretrained",
    "get_submodule",
    "no_sync",
    "join",
    "gradient_checkpointing_enable",
}
_HARMLESS_CALLS = {
    "print",
    "len",
    "isinstance",
    "hasattr",
    "getattr",
    "id",
    "str",
    "repr",
    "type",
    "vars",
    "dir",
    "format",
    "sum",
    "copy.deepcopy",
    "torch.save",
    "pprint.pprint",
}
_HARMLESS_PREFIXES = ("logging.", "logger.", "log.", "wandb.", "mlflow.", "tqdm.")
_LOSS_NAME = re.compile(r"(?i)^(\w+_)?loss(_\w+)?$")
_NONFINITE = re.compile(r"(?i)isfinite|isnan|isinf|^nan$|^inf$|overflow|found_inf|nonfinite")


@dataclass(frozen=True)
class Emit:
    """Send an event to some optimizers (``keys``); ``None`` means every known optimizer.
    A ``gate`` is a fact the event depends on (Accelerate's ``sync_gradients`` inside
    ``accumulate``, a DeepSpeed accumulation boundary): paths where it is false skip it."""

    event: Event
    keys: tuple[str, ...] | None
    only_if_single: bool = False  # with keys None: only when one optimizer is known
    gate: str | None = None


@dataclass(frozen=True)
class Backward:
    """A backward call; which optimizers it feeds is decided per path from the loss's origin."""

    site: Site
    scaled: bool
    divided: bool | None
    origin: Origin


@dataclass(frozen=True)
class Follow:
    """Interpret a function or lambda defined in a linted file, with arguments bound."""

    node: cst.FunctionDef | cst.Lambda
    bound: tuple[tuple[str, Obj | None], ...]
    cls: ClassInfo | None
    constants: tuple[tuple[str, object], ...] = ()  # parameters bound to literal values
    ctx: FileContext | None = None  # the file that defines it (None: the caller's)


@dataclass(frozen=True)
class Alternatives:
    """One of several callees runs (a method overridden in subclasses): paths of each."""

    follows: tuple[Follow, ...]


@dataclass(frozen=True)
class Mark:
    """Note something about the enclosing loops (no protocol effect)."""

    what: str


Action = Emit | Backward | Follow | Alternatives | Mark


class Host:
    """What the reader needs from the interpreter running it (see ``Interpreter``)."""

    frame: Frame
    discarding: int
    follows: int
    gate: str | None
    at: cst.CSTNode | None  # the statement being run, in the current frame


class Reader:
    """Turns the expressions of the current frame into actions."""

    def __init__(self, host: Host) -> None:
        self.host = host

    @property
    def frame(self) -> Frame:
        return self.host.frame

    @property
    def ctx(self) -> FileContext:
        return self.host.frame.ctx

    def site(self, node: cst.CSTNode) -> Site:
        return self.ctx.site(node)

    # expressions

    def of_expr(self, expr: cst.BaseExpression) -> list[Action]:
        actions: list[Action] = []
        for node in self.ctx.evaluation_order(expr):
            if isinstance(node, cst.Call):
                actions.extend(self.of_call(node))
            elif isinstance(node, cst.Attribute) and node.attr.value == "grad":
                actions.append(Mark("grads"))
                actions.append(Emit(Event(Move.GRAD_ACCESS), None))
        return actions

    def of_target(
        self, target: cst.BaseExpression, value: cst.BaseExpression | None
    ) -> list[Action]:
        """Stores into ``.grad``: clearing one tensor's gradient, or rewriting it by hand."""
        if isinstance(target, cst.Attribute) and target.attr.value == "grad":
            if isinstance(value, cst.Name) and value.value == "None":
                return [Mark("clears"), Emit(Event(Move.GRAD_ACCESS), None)]
            return [Mark("grads"), Emit(Event(Move.OPAQUE), None)]
        if isinstance(target, cst.Attribute) and target.attr.value == "data":
            return [Mark("grads")]
        if isinstance(target, cst.Attribute):
            owner = self.frame.resolve(target.value)
            if owner is not None and owner.role is Role.OPTIMIZER:
                # ``optimizer.acc_stats = True`` (K-FAC): the optimizer changes how it treats
                # the gradients it is given; what follows is no plain protocol any more
                return [Emit(Event(Move.OPAQUE), owner.members or (owner.key,))]
        if isinstance(target, (cst.Subscript, cst.Tuple, cst.List)):
            out: list[Action] = []
            for node in kids(target):
                if is_expression(node):
                    out.extend(self.of_expr(node))  # type: ignore[arg-type]
            return out
        return []

    def of_assignment(self, value: cst.BaseExpression, names: set[str]) -> list[Action]:
        """An optimizer built here starts with nothing to pile up (new parameters each
        iteration, or a deliberate restart)."""
        if not isinstance(value, cst.Call) or len(names) != 1:
            return []
        name = next(iter(names))
        built = self.frame.value_role(value, name)
        if built is None or built.role is not Role.OPTIMIZER or built.members:
            return []
        return [Mark("built_optimizer"), Emit(Event(Move.OPAQUE), (built.key,))]

    def reads_gradients(self, test: cst.BaseExpression) -> bool:
        """A condition on the gradients themselves (a non-finite norm, a found inf): paths
        that skip the step drop their gradients on purpose."""
        names = names_in(test)
        if any(_NONFINITE.search(name) for name in names):
            return True
        for name in names:
            for value in self.frame.local_values.get(name, ()):
                if isinstance(value, cst.Call):
                    last = (dotted(value.func) or "").rsplit(".", 1)[-1]
                    if last in _CLIP_FUNCTIONS or last == "clip_gradients":
                        return True
        return False

    # calls

    def of_call(self, call: cst.Call) -> list[Action]:
        func = call.func
        positional, keywords = call_args(call)
        prefix: list[Action] = []
        if isinstance(func, cst.Attribute):
            method = func.attr.value
            owner = self.frame.resolve(func.value)
            if owner is not None:
                handled = self.method_call(owner, method, call, positional, keywords)
                if handled is not None:
                    return handled
            if method == "backward":
                return [self.backward(call, func.value)]
            if method in CLEARING_NAMES:
                return [Mark("clears"), *self.unresolved_clear(call)]
            if "step" in method and owner is None:
                # ``schedule.step()`` may run forward and backward; ``self.optimizers[0]
                # .step()`` may step an optimizer, unlike ``envs = make_env(); envs.step()``
                prefix.append(Mark("opaque_model"))
                if not self.known_other(func.value):
                    prefix.append(Mark("stepped"))
        return prefix + self._plain_call(call, positional, keywords)

    def _plain_call(
        self,
        call: cst.Call,
        positional: list[cst.BaseExpression],
        keywords: dict[str, cst.BaseExpression],
    ) -> list[Action]:
        func = call.func
        frame = self.frame
        callee = self.callee(func)
        if callee is not None:
            return self.call_defined(callee, call, positional, keywords)
        qual = (
            self.ctx.imports.qualify(func) if isinstance(func, (cst.Name, cst.Attribute)) else None
        )
        if qual is not None:
            last = qual.rsplit(".", 1)[-1]
            if last in _CLIP_FUNCTIONS and ("torch" in qual or qual == last):
                return self.clip(call, positional[0] if positional else None)
            if qual in {"torch.autograd.backward", "autograd.backward"}:
                loss = positional[0] if positional else None
                divided = _divided(loss) if loss is not None else None
                found = (
                    origin(frame, loss, self.host.at)
                    if loss is not None
                    else Origin(frozenset(), False)
                )
                return [Backward(self.site(call), False, divided, found)]
            if last in CLEARING_NAMES:
                return [Mark("clears"), *self.unresolved_clear(call)]
        if isinstance(func, cst.Name):
            obj = frame.resolve_name(func.value)
            if obj is not None:
                return self.called_object(obj, call)
        if qual is not None and _harmless(qual):
            return []
        if frame.value_role(call, None) is not None:
            return []  # building an optimizer, scheduler, scaler or model does not step one
        return self.opaque_args(call)

    def call_defined(
        self,
        callee: list[tuple[FileContext, cst.FunctionDef, ClassInfo | None, Obj | None]],
        call: cst.Call,
        positional: list[cst.BaseExpression],
        keywords: dict[str, cst.BaseExpression],
    ) -> list[Action]:
        """A call to functions defined in linted files (several: overrides in subclasses)."""
        relevant = [c for c in callee if id(c[1]) in c[0].relevant]
        if not relevant:
            return self.helper_without_moves(call)
        if self.host.follows >= MAX_FOLLOWS_PER_ROOT:
            return self.opaque_args(call)
        follows = tuple(
            self.follow(ctx, node, cls, self_obj, call, positional, keywords)
            for ctx, node, cls, self_obj in relevant
        )
        actions: list[Action] = [follows[0] if len(follows) == 1 else Alternatives(follows)]
        if isinstance(call.func, cst.Name) and self.is_closure(call.func.value):
            # a step closure called once more (for a metric): its gradients are not for a step
            actions.append(Emit(Event(Move.GRAD_ACCESS), None))
        return actions

    def is_closure(self, name: str) -> bool:
        func = self.frame.func
        if func is None or name not in self.frame.local_defs:
            return False
        return name in _closure_names(self.ctx, func)

    def method_call(
        self,
        owner: Obj,
        method: str,
        call: cst.Call,
        positional: list[cst.BaseExpression],
        keywords: dict[str, cst.BaseExpression],
    ) -> list[Action] | None:
        site = self.site(call)
        role = owner.role
        keys = owner.members or (owner.key,)
        gate = self.host.gate
        if role is Role.OPTIMIZER:
            if method == "zero_grad":
                return [Emit(self.zero_event(site), keys, gate=gate)]
            if method == "step":
                closure = positional[0] if positional else keywords.get("closure")
                before: list[Action] = []
                if closure is not None:
                    body = self.closure_body(closure)
                    before = [body] if body is not None else [Emit(Event(Move.OPAQUE), keys)]
                return [*before, Emit(Event(Move.STEP, site), keys, gate=gate)]
            if method in _OPTIMIZER_HARMLESS:
                return []
            return [Emit(Event(Move.OPAQUE), keys)]
        if role is Role.ENGINE:
            boundary = f"<boundary:{owner.key}>"
            if method == "backward":
                return [Backward(site, False, True, Origin(frozenset({owner.key}), True))]
            if method == "step":
                return [
                    Emit(Event(Move.STEP, site), keys, gate=boundary),
                    Emit(Event(Move.ZERO), keys, gate=boundary),
                ]
            if method == "zero_grad":
                return [Emit(Event(Move.ZERO, site), keys)]
            if method == "forward":
                return [Mark("forward")]
            return []
        if role is Role.SCHEDULER:
            if method == "step":
                targets = tuple(owner.models) or None
                return [Emit(Event(Move.SCHED_STEP, site), targets, gate=gate)]
            return []
        if role is Role.SCALER:
            return self.scaler_call(method, site, positional)
        if role is Role.ACCELERATOR:
            if method == "backward":
                loss = positional[0] if positional else keywords.get("loss")
                found = (
                    origin(self.frame, loss, self.host.at)
                    if loss is not None
                    else Origin(frozenset(), False)
                )
                return [Backward(site, False, True, found)]
            if method in {"clip_grad_norm_", "clip_grad_value_"}:
                return self.clip(call, positional[0] if positional else None)
            if method == "clip_gradients":
                target = positional[1] if len(positional) > 1 else keywords.get("optimizer")
                return self.clip(
                    call, target if target is not None else (positional[0] if positional else None)
                )
            return []
        if role is Role.LIGHTNING:
            if method == "manual_backward":
                loss = positional[0] if positional else None
                found = (
                    origin(self.frame, loss, self.host.at)
                    if loss is not None
                    else Origin(frozenset(), False)
                )
                return [Backward(site, False, True, found)]
            if method == "clip_gradients":
                target = positional[0] if positional else keywords.get("optimizer")
                return self.clip(call, target)
            if method in {
                "optimizers",
                "lr_schedulers",
                "log",
                "log_dict",
                "toggle_optimizer",
                "untoggle_optimizer",
            }:
                return []
        if role in (Role.MODEL, Role.LIGHTNING, Role.INSTANCE):
            if method == "zero_grad":
                return [Mark("clears"), *self.zero_for_model(owner, site)]
            if owner.cls is not None and owner.cls.method(method) is not None:
                return None  # a method defined in a linted file: follow it
            if role is Role.INSTANCE:
                return None
            if method == "forward" or method in {"generate", "loss", "compute_loss"}:
                return (
                    [Mark("forward"), Mark("opaque_model")]
                    if method != "forward"
                    else [Mark("forward")]
                )
            if method in _MODEL_HARMLESS or is_model_method(method):
                return []
            return [Mark("forward"), Mark("opaque_model"), *self.opaque_args(call)]
        return None

    def scaler_call(self, method: str, site: Site, positional: list) -> list[Action]:
        if method in {"step", "unscale_"} and positional:
            target = self.frame.resolve(positional[0])
            if target is None or target.role is not Role.OPTIMIZER:
                return []
            keys = target.members or (target.key,)
            if method == "step":
                return [Emit(Event(Move.STEP, site, via_scaler=True), keys, gate=self.host.gate)]
            return [Emit(Event(Move.UNSCALE, site), keys)]
        if method == "update":
            return [Emit(Event(Move.SCALER_UPDATE, site), None)]
        return []

    def known_other(self, receiver: cst.BaseExpression) -> bool:
        """A plain local or global name assigned from something that is not an optimizer
        (``envs = gym.vector.SyncVectorEnv(...)``): its ``step()`` steps no optimizer."""
        if not isinstance(receiver, cst.Name):
            return False
        frame: Frame | None = self.frame
        while frame is not None:
            if receiver.value in frame.local_values or receiver.value in frame.tuple_values:
                return True
            frame = frame.parent
        return False

    def zero_event(self, site: Site | None) -> Event:
        return Event(Move.ZERO, site, deliberate=self.host.discarding > 0)

    def closure_body(self, closure: cst.BaseExpression) -> Follow | None:
        if isinstance(closure, cst.Lambda):
            return Follow(closure, (), None)
        if isinstance(closure, cst.Name):
            node = self.frame.local_defs.get(closure.value) or self.ctx.functions.get(closure.value)
            if node is not None:
                return Follow(node, (), None)
        return None

    def backward(self, call: cst.Call, receiver: cst.BaseExpression) -> Backward:
        scaled = False
        loss = receiver
        if isinstance(receiver, cst.Call) and isinstance(receiver.func, cst.Attribute):
            owner = self.frame.resolve(receiver.func.value)
            if receiver.func.attr.value == "scale" and owner is not None:
                if owner.role is Role.SCALER:
                    scaled = True
                    if receiver.args:
                        loss = receiver.args[0].value
        return Backward(
            self.site(call), scaled, _divided(loss), origin(self.frame, receiver, self.host.at)
        )

    def clip(self, call: cst.Call, params: cst.BaseExpression | None) -> list[Action]:
        site = self.site(call)
        opts = self.frame.optimizers()
        keys: list[str] = []
        if params is not None:
            for root in roots_of(params):
                obj = self.frame.resolve(root)
                if obj is None:
                    continue
                if obj.role is Role.OPTIMIZER:
                    keys.extend(obj.members or (obj.key,))
                elif obj.role in (Role.MODEL, Role.LIGHTNING, Role.ENGINE):
                    keys.extend(o.key for o in opts if obj.key in o.models)
        if keys:
            return [Emit(Event(Move.CLIP, site), tuple(dict.fromkeys(keys)))]
        return [Emit(Event(Move.CLIP, site), None, only_if_single=True)] if len(opts) <= 1 else []

    def unresolved_clear(self, call: cst.Call) -> list[Action]:
        """``something.zero_grad()`` on a receiver we could not resolve: with one optimizer in
        sight it is that optimizer's clear; otherwise no claim."""
        opts = [o.key for o in self.frame.optimizers()]
        if len(opts) == 1:
            return [Emit(self.zero_event(self.site(call)), tuple(opts))]
        return [Emit(Event(Move.OPAQUE), tuple(opts))] if opts else []

    def clears_all_grads(self, stmt: cst.For) -> list[Action] | None:
        """``for p in model.parameters(): p.grad = None`` (or ``.zero_()``) is a full clear."""
        if not isinstance(stmt.target, cst.Name):
            return None
        var = stmt.target.value
        it = stmt.iter
        if not (isinstance(it, cst.Call) and isinstance(it.func, cst.Attribute)):
            return None
        if it.func.attr.value != "parameters" or it.args:
            return None
        owner = self.frame.resolve(it.func.value)
        if owner is None or owner.role not in (Role.MODEL, Role.LIGHTNING):
            return None
        if not body_clears(stmt.body, var):
            return None
        return [Mark("clears"), *self.zero_for_model(owner, self.site(stmt))]

    def zero_for_model(self, model: Obj, site: Site) -> list[Action]:
        opts = self.frame.optimizers()
        bound = [o.key for o in opts if model.key in o.models]
        if bound:
            return [Emit(self.zero_event(site), tuple(bound))]
        unbound = [o.key for o in opts if not o.models]
        if len(opts) == 1 and unbound:
            return [Emit(self.zero_event(site), tuple(unbound))]
        return [Emit(Event(Move.OPAQUE), tuple(unbound))] if unbound else []

    # calls into code of the linted files

    def callee(
        self, func: cst.BaseExpression
    ) -> list[tuple[FileContext, cst.FunctionDef, ClassInfo | None, Obj | None]] | None:
        """The functions or methods of linted files that ``func`` names (the overrides of a
        method in the subclasses of ``self``'s class too); None when it names none."""
        frame = self.frame
        ctx = self.ctx
        if isinstance(func, cst.Name):
            name = func.value
            if name in frame.local_defs:
                return [(ctx, frame.local_defs[name], None, None)]
            obj = frame.resolve_name(name)
            if obj is not None and obj.cls is not None:
                found = obj.cls.method("__call__")
                if found is not None:
                    return [(found[0].ctx, found[1], obj.cls, obj)]
                return None
            if name in frame.local_values or name in frame.params:
                return None
            if name in ctx.functions:
                return [(ctx, ctx.functions[name], None, None)]
            if name in ctx.imports.aliases:
                return self._external(ctx.imports.aliases[name])
            return None
        if isinstance(func, cst.Attribute):
            owner = frame.resolve(func.value)
            if owner is not None and owner.cls is not None:
                return self._method(owner, func.attr.value)
            if owner is None and frame.is_module_name(func.value):
                qual = ctx.imports.qualify(func)
                if qual is not None:
                    return self._external(qual)
        return None

    def _method(
        self, owner: Obj, name: str
    ) -> list[tuple[FileContext, cst.FunctionDef, ClassInfo | None, Obj | None]] | None:
        cls = owner.cls
        assert cls is not None
        found = cls.method(name)
        if found is None:
            return None
        info, node = found
        if is_abstract(node):
            return None  # overridden elsewhere: a call we cannot see into
        return [(info.ctx, node, cls, owner)]

    def _external(
        self, qual: str
    ) -> list[tuple[FileContext, cst.FunctionDef, ClassInfo | None, Obj | None]] | None:
        found = self.ctx.external(qual)
        if found is None:
            return None
        other, definition = found
        if isinstance(definition, cst.FunctionDef):
            return [(other, definition, None, None)]
        return None

    def follow(
        self,
        ctx: FileContext,
        node: cst.FunctionDef,
        cls: ClassInfo | None,
        self_obj: Obj | None,
        call: cst.Call,
        positional: list[cst.BaseExpression],
        keywords: dict[str, cst.BaseExpression],
    ) -> Follow:
        params = params_of(node)
        bound: dict[str, Obj | None] = {}
        if cls is not None and params and params[0].name.value in {"self", "cls"}:
            if self_obj is not None:
                bound[params[0].name.value] = self_obj
            params = params[1:]
        for param, arg in zip(params, positional, strict=False):
            bound[param.name.value] = self.frame.resolve(arg)
        names = {p.name.value for p in [*params, *node.params.kwonly_params]}
        for name, arg in keywords.items():
            if name in names:
                bound[name] = self.frame.resolve(arg)
        bound = {k: v for k, v in bound.items() if v is not None}
        starred = any(arg.star for arg in call.args)
        constants = () if starred else _constants(node, positional, keywords, cls)
        return Follow(node, tuple(bound.items()), cls, constants, ctx)

    def helper_without_moves(self, call: cst.Call) -> list[Action]:
        """A function of a linted file that mentions no move: at most a forward pass (it may
        compute the loss), and it may pass an optimizer it receives on to anything."""
        actions: list[Action] = []
        for action in self.opaque_args(call):
            actions.append(Mark("forward") if isinstance(action, Mark) else action)
        return actions

    def called_object(self, obj: Obj, call: cst.Call) -> list[Action]:
        if obj.role in (Role.MODEL, Role.ENGINE, Role.LIGHTNING):
            return [Mark("forward")]
        if obj.role is Role.FACTORY:
            return []
        return self.opaque_args(call)

    def opaque_args(self, call: cst.Call) -> list[Action]:
        """A call we cannot see into: optimizers it receives may have been stepped or cleared;
        a model it receives may have been run backward."""
        keys: list[str] = []
        model = False
        for arg in call.args:
            obj = (
                self.frame.resolve(arg.value)
                if isinstance(arg.value, (cst.Name, cst.Attribute, cst.Subscript))
                else None
            )
            if obj is None:
                continue
            if obj.role in (Role.OPTIMIZER, Role.ENGINE):
                keys.extend(obj.members or (obj.key,))
            elif obj.role in (Role.MODEL, Role.LIGHTNING):
                model = True
        actions: list[Action] = []
        if keys:
            actions.append(Emit(Event(Move.OPAQUE), tuple(keys)))
        if model:
            actions.append(Mark("opaque_model"))
        return actions


def is_loss_name(name: str) -> bool:
    return bool(_LOSS_NAME.match(name))


def _closure_names(ctx: FileContext, func: cst.FunctionDef) -> set[str]:
    """Names passed as the closure of an optimizer step in a function (``opt.step(closure)``)."""
    cache = getattr(ctx, "_closures", None)
    if cache is None:
        cache = {}
        ctx._closures = cache  # type: ignore[attr-defined]
    key = id(func)
    if key not in cache:
        names: set[str] = set()
        for node in walk(func.body):
            if (
                isinstance(node, cst.Call)
                and isinstance(node.func, cst.Attribute)
                and node.func.attr.value == "step"
                and node.args
                and isinstance(node.args[0].value, cst.Name)
            ):
                names.add(node.args[0].value.value)
        cache[key] = names
    return cache[key]


def _constants(
    node: cst.FunctionDef,
    positional: Sequence[cst.BaseExpression],
    keywords: dict[str, cst.BaseExpression],
    cls: ClassInfo | None,
) -> tuple[tuple[str, object], ...]:
    """The parameters of a followed call that hold literal values: literal arguments, and
    literal defaults of parameters the call does not pass."""
    params = params_of(node)
    if cls is not None and params and params[0].name.value in {"self", "cls"}:
        params = params[1:]
    out: dict[str, object] = {}
    for i, param in enumerate([*params, *node.params.kwonly_params]):
        name = param.name.value
        if i < len(params) and i < len(positional):
            arg: cst.BaseExpression | None = positional[i]
        elif name in keywords:
            arg = keywords[name]
        else:
            arg = param.default
        ok, value = literal(arg)
        if ok:
            out[name] = value
    return tuple(out.items())


def _harmless(qual: str) -> bool:
    """Calls that receive an optimizer or model only to look at it."""
    return qual in _HARMLESS_CALLS or qual.startswith(_HARMLESS_PREFIXES)


def _divided(loss: cst.BaseExpression) -> bool | None:
    """Whether a loss expression visibly divides (``loss / n``); None when it is just a name."""
    if isinstance(loss, cst.BinaryOperation) and isinstance(
        loss.operator, (cst.Divide, cst.Multiply)
    ):
        return True
    return None
