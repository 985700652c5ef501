"""What a call on a receiver of known role does: the moves of optimizers, GradScalers, LR
schedulers, DeepSpeed engines, Accelerate and Fabric, Lightning modules and models."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import libcst as cst

from loopcheck.protocol import Event, Move
from loopcheck.static.bodies import function_layout
from loopcheck.static.classes import ClassInfo, schedule_keyed_elsewhere
from loopcheck.static.dataflow import Origin, origin
from loopcheck.static.division import divided_where
from loopcheck.static.index import FileContext
from loopcheck.static.model import Site
from loopcheck.static.moves import (
    Action,
    Backward,
    Emit,
    Evaluations,
    Follow,
    Forward,
    Mark,
    Mode,
)
from loopcheck.static.opaque import MAY_TRAIN, OpaqueCalls
from loopcheck.static.ownership import (
    constructor_of,
    frozen_by_code,
    module_key,
    optimized_models,
)
from loopcheck.static.roles import Obj, Role, is_model_method, siblings
from loopcheck.static.schedules import in_micro_batches, prepared, told_its_position
from loopcheck.static.syntax import (
    body_clears,
    call_args,
    called_name,
    literal,
    roots_of,
)
from loopcheck.static.tree import walk

if TYPE_CHECKING:
    from loopcheck.static.frames import Frame

CLIP_FUNCTIONS = {
    "clip_grad_norm_",
    "clip_grad_norm",
    "clip_grad_value_",
    "clip_grads_with_norm_",
}
# An engine's methods that run forward and backward passes inside (a pipeline schedule)
_RUNS_PASSES = re.compile(r"backward|schedule|^train_batch$")

_OPTIMIZER_HARMLESS = {
    "state_dict",
    "load_state_dict",
    "add_param_group",
    # set-up of a wrapped or shared optimizer (cherry's ``Distributed.sync_parameters()``,
    # a Hogwild ``share_memory()``, ZeRO's ``consolidate_state_dict()``)
    "sync_parameters",
    "share_memory",
    "consolidate_state_dict",
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
# a model's own utilities, named for what they do to its state, not run on data
# (gpt-neox's ``model.module.clear_cache()`` between batches)
_UTILITY = re.compile(
    r"^_*(clear|reset|set|enable|disable|register|remove|init|configure)_|_cache$"
)
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


class ApiReader(OpaqueCalls):
    """The moves of calls whose receiver's role is known, in the host's current frame."""

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
                return [Emit(self.zero_event(site), keys + self.same_parameters(owner), gate=gate)]
            if method == "step":
                step = Emit(Event(Move.STEP, site), keys, gate=gate)
                # the gradients it applies are those of optimizers over the same models too:
                # used, not lost when they clear them
                shared = self.same_parameters(owner)
                used = [Emit(Event(Move.GRAD_ACCESS), shared, gate=gate)] if shared else []
                closure = positional[0] if positional else keywords.get("closure")
                if closure is None:
                    return [step, *used]
                body = self.closure_of(closure, call)
                if body is None:
                    return [Emit(Event(Move.OPAQUE), keys), step, *used]
                assert type(call.func) is cst.Attribute
                if _evaluates_repeatedly(constructor_of(self.frame, call.func.value)):
                    return [Evaluations(call, body, (step, *used))]
                return [body, step, *used]
            if method in _OPTIMIZER_HARMLESS:
                return []
            if method in ("first_step", "second_step"):
                # sharpness-aware minimisation (SAM): the first step reads the gradients to
                # perturb the weights, the second applies them; either clears when told to
                clears = literal(
                    keywords.get("zero_grad", positional[0] if positional else None)
                ) == (True, True)
                move = Event(Move.GRAD_ACCESS) if method == "first_step" else Event(Move.STEP, site)
                after = [Emit(self.zero_event(site), keys)] if clears else []
                return [Emit(move, keys, gate=gate), *after]
            return [Emit(Event(Move.OPAQUE), keys)]
        if role is Role.ENGINE:
            if method == "backward":
                return [Backward(site, False, True, Origin(frozenset({owner.key}), True))]
            if method == "step":
                # the engine steps at its accumulation boundary, every call unless configured
                # otherwise (a config the code does not show): taken as stepping and clearing
                return [Emit(Event(Move.STEP, site), keys), Emit(Event(Move.ZERO), keys)]
            if method == "zero_grad":
                return [Emit(Event(Move.ZERO, site), keys)]
            if method == "forward":
                return [Forward(site, owner.key)]
            if method in {"eval", "train"}:
                return [Mode(site, owner.key, _training(method, positional, keywords))]
            if _RUNS_PASSES.search(method):
                # ``engine.execute_schedule(data_iter)``, DeepSpeed's ``engine.train_batch()``:
                # forward and backward passes run inside (a pipeline schedule)
                return [Mark("opaque_model"), self.backward_of(call, None)]
            return []
        if role is Role.SCHEDULER:
            if method == "step" and schedule_keyed_elsewhere(owner.cls):
                # its position is the optimizer's own step count: whenever it is called, it
                # sets the rate of the next step (NVIDIA BERT's ``PolyWarmUpScheduler``)
                return []
            if method == "step" and told_its_position(call):
                # ``scheduler.step(cur_epoch=e, cur_step=i)``, ``step(epoch)``: the rate is set
                # for the position given, however often it is called (LAVIS's schedulers)
                return []
            if method == "step":
                targets = tuple(owner.models) or None
                # told its epoch or metric (``step(epoch)``, ``step(val_loss)``), or of an
                # unknown optimizer: judged only after a backward, not at the epoch's top
                told = bool(call.args) or targets is None
                if (
                    gate is not None
                    and not prepared(self.frame, call.func)
                    and not in_micro_batches(self.frame, call.func)
                ):
                    # a scheduler the accelerator was not handed steps on every micro-batch
                    # of ``accumulate`` (only a prepared one skips the non-sync ones), a
                    # mistake unless its lengths count micro-batches (diffusers RealFill)
                    gate = None
                return [Emit(Event(Move.SCHED_STEP, site, deliberate=told), targets, gate=gate)]
            return []
        if role is Role.SCALER:
            return self.scaler_call(method, site, positional)
        if role is Role.ACCELERATOR:
            if method == "backward":
                loss = positional[0] if positional else keywords.get("loss")
                assert type(call.func) is cst.Attribute
                divides = self.accelerator_divides(call.func.value)
                return [self.backward_of(call, loss, divides=divides)]
            if method in {"clip_grad_norm_", "clip_grad_value_"}:
                return self.clip(call, positional[0] if positional else None, unscales=True)
            if method == "clip_gradients":
                target = positional[1] if len(positional) > 1 else keywords.get("optimizer")
                return self.clip(
                    call,
                    target if target is not None else (positional[0] if positional else None),
                    unscales=True,
                )
            if method == "call":
                # ``fabric.call("on_validation_model_train")`` runs that hook of every callback
                # and of the module: what mode the models are in afterwards is unknown
                return [Mode(site, None, True)]
            return []
        if role is Role.LIGHTNING:
            if method == "manual_backward":
                # manual optimisation: Lightning does not divide for accumulation
                return [self.backward_of(call, positional[0] if positional else None)]
            if method == "clip_gradients":
                target = positional[0] if positional else keywords.get("optimizer")
                return self.clip(call, target, unscales=True)
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
            defined = owner.cls is not None and owner.cls.method(method) is not None
            if method == "zero_grad" and not (defined and role is Role.INSTANCE):
                return self.zero_for_model(owner, site)
            if defined:
                # a method defined in a linted file: follow it (an optimizer wrapper's own
                # ``zero_grad`` clears the optimizer it wraps)
                return None
            if role is Role.INSTANCE:
                return None
            forward = Forward(site, owner.key)
            if method == "forward":
                return [forward]
            if method in {"generate", "loss", "compute_loss"}:
                return [forward, Mark("opaque_model")]
            if method in {"eval", "train"}:
                assert type(call.func) is cst.Attribute
                if frozen_by_code(self.frame, call.func.value):
                    return []  # a frozen teacher or EMA copy: never trained, eval on purpose
                return [Mode(site, owner.key, _training(method, positional, keywords))]
            if method == "clip_grad_norm_":
                # FSDP's ``model.clip_grad_norm_(max_norm)``: a clip of the module's gradients
                assert type(call.func) is cst.Attribute
                return self.clip(call, call.func.value)
            if method in _MODEL_HARMLESS or is_model_method(method) or _UTILITY.search(method):
                return []
            if owner.cls is None and self.ctx.sole_method(method) is not None:
                return None  # the one class of this file with that method: follow it
            if owner.cls is None and _idle_method(self.ctx, method):
                # defined only by linted classes, none taking part in a step: a utility
                # (``raw_model.estimate_mfu(...)``); an optimizer handed to it stays unknown
                return [a for a in self.opaque_args(call) if isinstance(a, Emit)]
            if not self.host.grad_enabled:
                return [forward, *self.opaque_args(call)]  # ``vae.encode(x)`` under no_grad
            # a method named for training may run its backward and step; ``vae.encode(x)``
            # runs a forward; either may turn gradients off itself (BicycleGAN's
            # ``model.test(z)``) or be no forward at all (``model.get_z_random(n)``): no
            # graph is claimed for it (an evaluation is judged by the model's own calls)
            trains = MAY_TRAIN.search(method) is not None
            return [
                Forward(site, owner.key, graph=False),
                Mark("opaque_model" if trains else "opaque_aside"),
                *self.opaque_args(call),
            ]
        return None

    def scaler_call(self, method: str, site: Site, positional: list) -> list[Action]:
        if method in {"step", "unscale_"} and positional:
            target = self.frame.resolve(positional[0])
            if target is None:
                return []
            if target.role is Role.OPTIMIZER:
                keys = target.members or (target.key,)
            else:
                keys = self.wrapped_optimizers(positional[0], target)
                if not keys:
                    return []
            if method == "step":
                return [Emit(Event(Move.STEP, site, via_scaler=True), keys, gate=self.host.gate)]
            return [Emit(Event(Move.UNSCALE, site), keys)]
        if method == "update":
            return [Emit(Event(Move.SCALER_UPDATE, site), None)]
        return []

    def wrapped_optimizers(self, expr: cst.BaseExpression, target: Obj) -> tuple[str, ...]:
        """The optimizers an optimizer wrapper of the linted files holds (a Noam schedule's
        ``self.optimizer``), when the scaler is handed the wrapper: ``scaler.step(wrapper)``
        steps them through the wrapper's ``step()``."""
        cls = target.cls
        if target.role is not Role.INSTANCE or cls is None or cls.method("step") is None:
            return ()
        keys: list[str] = []
        for info in cls.mro():
            for attr in info.attr_values:
                held = self.frame.resolve(cst.Attribute(value=expr, attr=cst.Name(attr)))
                if held is not None and held.role is Role.OPTIMIZER:
                    keys.extend(held.members or (held.key,))
        return tuple(dict.fromkeys(keys))

    def known_other(self, receiver: cst.BaseExpression) -> bool:
        """A plain local or global name assigned from something that is not an optimizer
        (``envs = gym.vector.SyncVectorEnv(...)``): its ``step()`` steps no optimizer."""
        if type(receiver) is not cst.Name:
            return False
        frame: Frame | None = self.frame
        while frame is not None:
            if receiver.value in frame.local_values or receiver.value in frame.tuple_values:
                return True
            frame = frame.parent
        return False

    def manual_step(self, call: cst.Call) -> list[Action]:
        """``for p in model.parameters(): p.data.add_(p.grad, alpha=-lr)``: the model's
        parameters updated by hand from their gradients, a step of the optimizers over that
        model (an optimizer the script may use instead, on another branch)."""
        func = call.func
        assert type(func) is cst.Attribute
        receiver = func.value
        if type(receiver) is cst.Attribute and receiver.attr.value == "data":
            receiver = receiver.value
        if type(receiver) is not cst.Name:
            return []
        source = self.frame.loop_targets.get(receiver.value)
        if not (
            type(source) is cst.Call
            and type(source.func) is cst.Attribute
            and source.func.attr.value == "parameters"
        ):
            return []
        model = self.frame.resolve(source.func.value)
        if model is None or model.role not in (Role.MODEL, Role.LIGHTNING):
            return []
        keys = tuple(o.key for o in self.frame.optimizers() if model.key in o.models)
        return [Emit(Event(Move.STEP, self.site(call)), keys)] if keys else []

    def same_parameters(self, optimizer: Obj) -> tuple[str, ...]:
        """The other optimizers built over the very same models (an Adam warm-up and an L-BFGS
        over ``net.parameters()``): clearing one clears the gradients the other applies."""
        if not optimizer.models or optimizer.members:
            return ()
        return tuple(
            o.key
            for o in self.frame.optimizers()
            if o.key != optimizer.key
            and o.models == optimizer.models
            and o.role is Role.OPTIMIZER
            and not siblings(o.key, optimizer.key)
        )

    def zero_event(self, site: Site | None) -> Event:
        return Event(Move.ZERO, site, deliberate=self.host.discarding > 0)

    def closure_of(self, closure: cst.BaseExpression, call: cst.Call) -> Follow | None:
        """The closure handed to ``step(closure)``, to follow; the expression reader that
        resolves calls replaces this (see ``Reader.closure_follow``)."""
        return Follow(closure, (), None) if type(closure) is cst.Lambda else None

    def backward(self, call: cst.Call, receiver: cst.BaseExpression) -> Backward:
        """``loss.backward()`` or ``scaler.scale(loss).backward()``."""
        scaled = False
        loss = receiver
        if type(receiver) is cst.Call and type(receiver.func) is cst.Attribute:
            owner = self.frame.resolve(receiver.func.value)
            if receiver.func.attr.value == "scale" and owner is not None:
                if owner.role is Role.SCALER:
                    scaled = not _disabled(constructor_of(self.frame, receiver.func.value))
                    if receiver.args:
                        loss = receiver.args[0].value
        return self.backward_of(call, loss, scaled=scaled, origin_of=receiver)

    def backward_of(
        self,
        call: cst.Call,
        loss: cst.BaseExpression | None,
        *,
        scaled: bool = False,
        divides: bool = False,
        origin_of: cst.BaseExpression | None = None,
    ) -> Backward:
        """A backward of ``loss``; ``divides``: the framework divides it (DeepSpeed, Accelerate
        configured to accumulate)."""
        site = self.site(call)
        if loss is None:
            return Backward(site, scaled, True if divides else None, Origin(frozenset(), False))
        at = self.host.at
        split, handed = (True, False) if divides else divided_where(self.frame, loss, at)
        found = origin(self.frame, origin_of or loss, at)
        inside = self._computed_in_no_grad(loss)
        caller = self.frame.handed_at if handed else None
        return Backward(
            site,
            scaled,
            split,  # type: ignore[arg-type]
            found,
            inside,
            caller,
            retains=_retains_graph(call),
        )

    def _computed_in_no_grad(self, loss: cst.BaseExpression) -> bool:
        """Whether the loss was computed inside the no-grad region the backward runs in: inline
        (``model(x).sum().backward()``), or assigned only there."""
        blocks = self.host.no_grad_blocks
        if not blocks or self.host.grad_enabled:
            return False
        inside = _node_ids(blocks[-1])
        base = loss
        while type(base) in (cst.Attribute, cst.Subscript):
            base = base.value  # ``outputs.loss``, ``losses["total"]``: where ``outputs`` was made
        if type(base) is not cst.Name:
            return True  # computed inline: ``model(x).sum().backward()``
        if base.value == "self":
            return False  # a loss kept on the instance: made wherever the instance was
        at = self.host.at
        defs = function_layout(self.frame).reaching(base.value, at) if at is not None else None
        return bool(defs) and all(id(d.statement) in inside for d in defs)

    def accelerator_divides(self, receiver: cst.BaseExpression) -> bool:
        """``accelerator.backward`` divides the loss by the accelerator's own accumulation
        steps: inside ``accumulate``, or when it was built with more than one."""
        if self.host.gate is not None and self.host.gate.startswith("<sync:"):
            return True
        built = constructor_of(self.frame, receiver)
        if built is None:
            return False
        for arg in built.args:
            if arg.keyword is not None and arg.keyword.value == "gradient_accumulation_steps":
                return not (type(arg.value) is cst.Integer and arg.value.value == "1")
        return False

    def clip(
        self, call: cst.Call, params: cst.BaseExpression | None, unscales: bool = False
    ) -> list[Action]:
        """A clip of ``params`` (``unscales``: by a framework that unscales AMP gradients)."""
        site = self.site(call)
        opts = self.frame.optimizers()
        keys: list[str] = []
        if params is not None:
            for root in roots_of(params):
                obj = self.frame.resolve(root)
                if obj is None:
                    # ``self.critic_ensemble`` handed in, of no type the linter knows: the
                    # optimizers built over that very module
                    key = module_key(self.frame, root)
                    keys.extend(o.key for o in opts if key is not None and key in o.models)
                    continue
                if obj.role is Role.OPTIMIZER:
                    keys.extend(obj.members or (obj.key,))
                elif obj.role in (Role.MODEL, Role.LIGHTNING, Role.ENGINE):
                    keys.extend(o.key for o in opts if obj.key in o.models)
        event = Event(Move.CLIP, site, unscales=unscales)
        if not keys and opts:
            keys = self._moved_here()
        if keys:
            return [Emit(event, tuple(dict.fromkeys(keys)))]
        return [Emit(event, None, only_if_single=True)] if len(opts) <= 1 else []

    def _moved_here(self) -> list[str]:
        """The one optimizer the running function steps or clears, if it moves only one
        (imagen's ``update()``: ``optimizer = getattr(self, f"optim{index}")``, stepped,
        its model's gradients clipped): what a clip of parameters we cannot place applies to."""
        func = self.frame.func
        if func is None:
            return []
        found = set()
        for node in walk(func.body):
            if (
                type(node) is cst.Call
                and type(node.func) is cst.Attribute
                and node.func.attr.value in ("step", "zero_grad")
            ):
                obj = self.frame.resolve(node.func.value)
                if obj is not None and obj.role is Role.OPTIMIZER:
                    found.add(obj.key)
        return list(found) if len(found) == 1 else []

    def unresolved_clear(self, call: cst.Call) -> list[Action]:
        """``something.zero_grad()`` on a receiver we could not resolve: with one optimizer in
        sight it is that optimizer's clear; otherwise no claim."""
        optimizers = self.frame.optimizers()
        opts = [o.key for o in optimizers]
        if len(opts) == 1:
            return [Emit(self.zero_event(self.site(call)), tuple(opts))]
        receiver = call.func.value if type(call.func) is cst.Attribute else None
        key = module_key(self.frame, receiver) if receiver is not None else None
        if key is not None and any(key in o.models for o in optimizers):
            # ``D.zero_grad()`` on a module of a type we do not know (a repository's own
            # ``module.ConvDiscriminator``), with ``D_optimizer`` built over ``D.parameters()``
            return self.zero_for_model(Obj(Role.MODEL, key), self.site(call))
        return [Emit(Event(Move.OPAQUE), tuple(opts))] if opts else []

    def clears_all_grads(self, stmt: cst.For) -> list[Action] | None:
        """``for p in model.parameters(): p.grad = None`` (or ``.zero_()``) is a full clear."""
        if type(stmt.target) is not cst.Name:
            return None
        var = stmt.target.value
        it = stmt.iter
        if not (type(it) is cst.Call and type(it.func) is cst.Attribute):
            return None
        if it.func.attr.value != "parameters" or it.args:
            return None
        owner = self.frame.resolve(it.func.value)
        if owner is None:
            # ``self.model = self.network.build(cfg)``: a module of a type the linter does not
            # know, whose parameters an optimizer in sight was built from
            key = module_key(self.frame, it.func.value)
            if key is not None and key in optimized_models(self.frame):
                owner = Obj(Role.MODEL, key)
        if owner is None or owner.role not in (Role.MODEL, Role.LIGHTNING):
            return None
        if not body_clears(stmt.body, var):
            return None
        return self.zero_for_model(owner, self.site(stmt))

    def zero_for_model(self, model: Obj, site: Site) -> list[Action]:
        """A model's own clear: the clear of the optimizers over its parameters. While some
        optimizer's parameters are unknown, the loop is also marked as clearing by name (it
        may clear that one too)."""
        opts = self.frame.optimizers()
        bound = [o.key for o in opts if model.key in o.models]
        unbound = [o.key for o in opts if not o.models]
        if len(opts) == 1 and unbound:
            return [Emit(self.zero_event(site), tuple(unbound))]
        mark: list[Action] = [Mark("clears")] if unbound or not opts else []
        if bound:
            return [*mark, Emit(self.zero_event(site), tuple(bound))]
        return [*mark, Emit(Event(Move.OPAQUE), tuple(unbound))] if unbound else mark


def _retains_graph(call: cst.Call) -> bool:
    """``loss.backward(retain_graph=True)``: keeps the graph for another backward."""
    value = call_args(call)[1].get("retain_graph")
    is_literal, kept = literal(value)
    return value is not None and (kept or not is_literal)


# The ids of the nodes under a node, remembered with the node itself: a node that was freed
# may lend its id to a new one, which must not find the old answer.
_IDS: dict[int, tuple[cst.CSTNode, frozenset[int]]] = {}


def _node_ids(node: cst.CSTNode) -> frozenset[int]:
    known = _IDS.get(id(node))
    if known is not None and known[0] is node:
        return known[1]
    if len(_IDS) > 256:
        _IDS.clear()
    found = frozenset(id(n) for n in walk(node))
    _IDS[id(node)] = (node, found)
    return found


def _training(method: str, positional: list, keywords: dict) -> bool:
    """``model.train()`` / ``train(True)`` trains, ``model.eval()`` / ``train(False)`` does not."""
    if method == "eval":
        return False
    flag = positional[0] if positional else keywords.get("mode")
    return not (type(flag) is cst.Name and flag.value == "False")


def _disabled(built: cst.Call | None) -> bool:
    """``GradScaler(enabled=False)``: a scaler that returns the loss as it is."""
    if built is None:
        return False
    for arg in built.args:
        if arg.keyword is not None and arg.keyword.value == "enabled":
            return type(arg.value) is cst.Name and arg.value.value == "False"
    return False


def _idle_method(ctx: FileContext, name: str) -> bool:
    """For a method of a model whose class is not known: whether the classes of this file
    and those it imports from the linted files define it, and none of those definitions takes
    part in a step (cached per file and name)."""
    return ctx.remember(f"idle method {name}", None, lambda: _idle(ctx, name))


def _idle(ctx: FileContext, name: str) -> bool:
    classes = list(ctx.classes.values())
    for qual in ctx.imports.aliases.values():
        found = ctx.external(qual)
        if found is not None and isinstance(found[1], ClassInfo):
            classes.append(found[1])
    methods = [(info, info.methods[name]) for info in classes if name in info.methods]
    return bool(methods) and not any(id(m) in info.ctx.relevant for info, m in methods)


def _evaluates_repeatedly(built: cst.Call | None) -> bool:
    """An optimizer built as L-BFGS, which evaluates its closure up to ``max_iter`` times in
    one ``step`` (unless told to evaluate it once)."""
    if built is None or called_name(built) != "LBFGS":
        return False
    once = next((a.value for a in built.args if a.keyword and a.keyword.value == "max_iter"), None)
    return not (type(once) is cst.Integer and once.value == "1")
