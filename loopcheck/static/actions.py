"""What one statement does to the optimizers: its calls dispatched (to the APIs of known
receivers, into functions of the linted files, or opaque), its stores into ``.grad``, its
assertions and conditions about gradients — turned into actions for the path interpreter."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace

import libcst as cst

from loopcheck.protocol import Event, Move
from loopcheck.static.apis import CLIP_FUNCTIONS, ApiReader
from loopcheck.static.bodies import appended_values
from loopcheck.static.callees import (
    clears_by_hand,
    clips_by_hand,
    filters_parameters,
    may_step,
    runs_backward,
)
from loopcheck.static.calls import CallFollower
from loopcheck.static.classes import self_attribute, self_uses
from loopcheck.static.conditions import touches
from loopcheck.static.foreign import (
    averages_gradients,
    harmless_call,
    is_pipeline_schedule,
    may_step_unresolved,
    persists,
)
from loopcheck.static.gradients import (
    asserts_no_grad,
    changes_grad,
    hands_grad,
    holds_grad,
    inspected_grads,
    keeps_grad,
    manual_update,
    reduces_grad,
    rescales_grad,
    sanitized_grads,
    scaled_step,
)
from loopcheck.static.host import Host
from loopcheck.static.kept import names_a_loss
from loopcheck.static.moves import Action, Emit, Forward, Mark, Mode
from loopcheck.static.ownership import frozen_by_code, module_key, optimized_models
from loopcheck.static.relevance import CLEARING_NAMES
from loopcheck.static.roles import Obj, Role, builds_engine, constructed_role
from loopcheck.static.syntax import (
    by_zero,
    call_args,
    called_name,
    chains_in,
    dotted,
    is_loss_name,
    names_in,
    none_test,
)
from loopcheck.static.tensors import forward_takes_gradients, frozen_module
from loopcheck.static.tree import is_expression, kids, walk

_FINITE_TEST = re.compile(r"(?i)^is_?(finite|nan|inf)$")
# names of gradient state (``found_inf``, ``grad_norm``, ``loss_is_finite``): the bare test
# functions (``isfinite``) are taken out first by ``_FINITE_TEST``
_NONFINITE = re.compile(
    r"(?i)is_?finite|is_?nan|is_?inf|^nan$|^inf$|overflow|found_inf|non_?finite|grad_?norm"
)


class Reader(CallFollower):
    """Turns the expressions of the current frame into actions."""

    def __init__(self, host: Host) -> None:
        super().__init__(host)
        self.apis = ApiReader(host)
        self.apis.closure_of = self.closure_follow  # type: ignore[method-assign]
        self.gradient_tests: dict[tuple[int, int], tuple[cst.BaseExpression, bool]] = {}

    # expressions

    def of_expr(self, expr: cst.BaseExpression) -> list[Action]:
        actions: list[Action] = []
        order = self.ctx.evaluation_order(expr)
        # ``p.grad.div_(n)``: the accumulated sum normalised by hand, neither applied nor
        # cleared (unless multiplied by zero); its ``p.grad`` is no read by hand
        rescaling = {id(n): n for n in order if type(n) is cst.Call and rescales_grad(n)}
        receivers = (
            {id(r) for call in rescaling.values() for r in walk(call.func)} if rescaling else ()
        )
        for node in order:
            if id(node) in receivers:
                continue
            if id(node) in rescaling:
                if by_zero(node):
                    actions.append(Mark("grads_rewritten"))
                actions.append(Emit(Event(Move.GRAD_RESCALE), None))
            elif type(node) is cst.Call:
                if scaled_step(node):
                    actions.append(Emit(Event(Move.GRAD_RESCALE), None))
                if (hands_grad(node) or changes_grad(node)) and not reduces_grad(node):
                    actions.append(Mark("grads_rewritten"))
                if manual_update(node):
                    actions.extend(self.apis.manual_step(node))
                actions.extend(self.of_call(node))
            elif type(node) is cst.Attribute and node.attr.value == "grad":
                if id(node) in inspected_grads(self.ctx, expr):
                    # ``p.grad is None``, a norm: looked at, still to be applied (a clear
                    # before the step drops them all the same)
                    actions.append(Mark("grads_inspected"))
                    continue
                actions.append(Mark("grads"))
                if id(node) in sanitized_grads(self.ctx, expr):
                    # ``p.grad.clamp_(-1, 1)``, ``torch.nan_to_num(p.grad, out=p.grad)``:
                    # changed in place, still to be applied
                    actions.append(Mark("grads_rewritten"))
                    continue
                if keeps_grad(self.ctx, expr):
                    actions.append(Mark("grads_rewritten"))
                actions.append(Emit(Event(Move.GRAD_ACCESS), None))
        return actions

    def of_target(
        self,
        target: cst.BaseExpression,
        value: cst.BaseExpression | None,
        operator: cst.BaseAugOp | None = None,
    ) -> list[Action]:
        """Stores into ``.grad``: clearing one tensor's gradient, or rewriting it by hand."""
        if type(target) is cst.Attribute and target.attr.value == "grad":
            if type(value) is cst.Name and value.value == "None":
                if self.host.at is not None and filters_parameters(
                    self.ctx, self.frame.func, self.host.at
                ):
                    # ``if "last_layer" in n: p.grad = None``: some layers' gradients
                    # cancelled before the step (frozen for now), not a clear of the rest
                    return [Emit(Event(Move.GRAD_ACCESS), None)]
                return [Mark("clears"), Emit(Event(Move.GRAD_ACCESS), None)]
            if type(operator) in (cst.DivideAssign, cst.MultiplyAssign) and not (
                type(value) in (cst.Integer, cst.Float) and value.value in ("0", "0.0", "0.")
            ):
                # ``p.grad *= 1 / n``: normalised by hand, neither applied nor cleared
                return [Mark("grads"), Emit(Event(Move.GRAD_RESCALE), None)]
            if type(value) is cst.Call and reduces_grad(value):
                # ``p.grad = accelerator.reduce(p.grad, reduction="mean")``: averaged across
                # processes, neither applied nor cleared
                return [Mark("grads_inspected"), Emit(Event(Move.GRAD_ACCESS), None)]
            return [Mark("grads"), Mark("grads_rewritten"), Emit(Event(Move.OPAQUE), None)]
        if type(target) is cst.Attribute and target.attr.value == "main_grad":
            if type(value) is cst.Name and value.value == "None":
                return []
            # ``param.main_grad = g``: the fp32 gradient buffer that mixed-precision optimizers
            # (Megatron, Apex) step on, written by hand: gradients given, as by ``p.grad = g``
            return [Mark("grads"), Mark("grads_rewritten"), Emit(Event(Move.OPAQUE), None)]
        if type(target) is cst.Attribute and target.attr.value == "data":
            inner = target.value
            if type(inner) is cst.Attribute and inner.attr.value == "grad":
                return [Mark("grads"), Mark("grads_rewritten")]  # ``p.grad.data = ...``
            # ``p.data = p.data - lr * p.grad``: parameters updated by hand (a step, not a
            # clear); ``fake.data = fake.data.mul(0.5)``: a tensor rescaled for display
            return [Mark("grads")] if value is not None and "grad" in names_in(value) else []
        if type(target) is cst.Attribute:
            owner = self.frame.resolve(target.value)
            if owner is not None and owner.role is Role.OPTIMIZER:
                # ``optimizer.acc_stats = True`` (K-FAC): the optimizer changes how it treats
                # the gradients it is given; what follows is no plain protocol any more
                return [Emit(Event(Move.OPAQUE), owner.members or (owner.key,))]
        if type(target) in (cst.Subscript, cst.Tuple, cst.List):
            out: list[Action] = []
            for node in kids(target):
                if is_expression(node):
                    out.extend(self.of_expr(node))  # type: ignore[arg-type]
            return out
        return []

    def of_assert(self, test: cst.BaseExpression) -> list[Action]:
        """``assert all(p.grad is None for p in model.parameters())``: on this path the
        gradients are known to be clear (a fact, not a clear that could lose anything)."""
        actions = self.of_expr(test)
        if asserts_no_grad(test):
            event = Event(Move.ZERO, None, deliberate=True)
            actions = [a for a in actions if not isinstance(a, Emit)] + [Emit(event, None)]
        return actions

    def of_assignment(
        self, value: cst.BaseExpression, names: frozenset[str], fresh: frozenset[str]
    ) -> list[Action]:
        """An optimizer built in a loop over parameters made in the same iteration (``fresh``
        names the loop assigns) starts with nothing to pile up. Rebuilt over the same model,
        its gradients still pile up."""
        if type(value) is not cst.Call or len(names) != 1:
            return []
        func = value.func
        if type(func) is cst.Attribute and not self.frame.is_module_name(func.value):
            return []  # ``self.optimizers()``, ``accelerator.prepare(opt)``: not a new one
        name = next(iter(names))
        built = self.frame.value_role(value, name)
        if built is not None and built.role is Role.SCALER:
            # a GradScaler built anew in the loop: nothing unscaled or stepped through it yet
            return [Emit(Event(Move.SCALER_UPDATE), None)]
        if not touches(chains_in(value), fresh):
            return []
        if (built is None or built.role is not Role.OPTIMIZER) and any(
            self._builds_optimizer(arg.value, name) for arg in value.args
        ):
            # ``optim = OptimWrapper(SGD(model.parameters()))``: a new optimizer, wrapped
            built = self.frame.resolve_name(name)
        if built is None or built.role is not Role.OPTIMIZER or built.members:
            return []
        return [Mark("built_optimizer"), Emit(Event(Move.OPAQUE, deliberate=True), (built.key,))]

    def _builds_optimizer(self, value: cst.BaseExpression, name: str) -> bool:
        if type(value) is not cst.Call:
            return False
        role = self.frame.value_role(value, name)
        return role is not None and role.role is Role.OPTIMIZER and not role.members

    def reads_gradients(self, test: cst.BaseExpression) -> bool:
        """A condition on the gradients themselves (a non-finite norm, a found inf): paths
        that skip the step drop their gradients on purpose (remembered per test and
        function: loops run a body several times)."""
        key = (id(test), id(self.frame.func))
        known = self.gradient_tests.get(key)
        if known is not None and known[0] is test:
            return known[1]
        found = not none_test(test) and self._about_gradients(names_in(test), depth=0)
        self.gradient_tests[key] = (test, found)
        return found

    def _about_gradients(self, names: set[str], depth: int) -> bool:
        # ``math.isfinite(loss_value)`` tests a loss, not the gradients: the test function
        # says nothing, what it is applied to does
        names = {name for name in names if not _FINITE_TEST.match(name)}
        if any(_NONFINITE.search(name) for name in names):
            return True
        if depth > 1:
            return False
        puts = appended_values(self.frame)
        for name in names:
            # ``grads.append(p.grad.view(-1))`` then ``if not grads:``: a test of what the
            # gradients hold
            if any(holds_grad(value) for value in puts.get(name, ())):
                return True
            for value in self.frame.local_values.get(name, ()):
                if type(value) is not cst.Call:
                    continue
                last = (dotted(value.func) or "").rsplit(".", 1)[-1]
                if last in CLIP_FUNCTIONS or last == "clip_gradients" or _NONFINITE.search(last):
                    return True
                if self._about_gradients(names_in(value), depth + 1):
                    return True
        return False

    def probes(self, body: Sequence[cst.CSTNode]) -> bool:
        """A block with ``assert ... .grad is None`` among its statements: whatever it clears
        was computed in it on purpose (a probe backward), not accumulated."""
        cache = self.ctx.probes_cache
        known = cache.get(id(body))
        if known is not None and known[0] is body:  # a list made for one call may be freed
            return known[1]
        found = any(
            type(stmt) is cst.SimpleStatementLine
            and any(type(s) is cst.Assert and asserts_no_grad(s.test) for s in stmt.body)
            for stmt in body
        )
        cache[id(body)] = (body, found)
        return found

    def _used_on_self(self, receiver: cst.BaseExpression) -> tuple[bool, bool]:
        """For ``self.<attr>``: whether the class calls it (``self._model(**batch)``), and
        whether it also switches it with ``eval()``/``train()`` (a module, then)."""
        cls = self.frame.cls
        attr = self_attribute(receiver)
        if cls is None or attr is None:
            return False, False
        called, switched = self_uses(cls)
        return attr in called, attr in called and attr in switched

    # calls

    def _partial(
        self, func: cst.BaseExpression
    ) -> tuple[cst.BaseExpression, list[cst.BaseExpression], dict[str, cst.BaseExpression]] | None:
        """What a name bound once to ``functools.partial(f, *args, **kwargs)`` calls."""
        if type(func) is not cst.Name:
            return None
        values = self.frame.local_values.get(func.value)
        if not values or len(values) != 1 or type(values[0]) is not cst.Call:
            return None
        made = values[0]
        if type(made.func) not in (cst.Name, cst.Attribute):
            return None
        if self.ctx.imports.qualify(made.func) != "functools.partial":
            return None
        positional, keywords = call_args(made)
        if not positional or any(a.star for a in made.args):
            return None
        return positional[0], positional[1:], keywords

    def of_call(self, call: cst.Call) -> list[Action]:
        func = call.func
        positional, keywords = call_args(call)
        prefix: list[Action] = []
        partial = self._partial(func)
        if partial is not None:
            # ``backwards = partial(loss_backwards, self.fp16)``: the function it binds, with
            # the bound arguments first
            target, bound, named = partial
            callee = self.callee(target)
            if callee is not None:
                return self.call_defined(callee, call, [*bound, *positional], {**named, **keywords})
        if type(func) is cst.Attribute:
            method = func.attr.value
            owner = self.frame.resolve(func.value)
            held = self.held_function(owner, method) if owner is not None else None
            if held is not None and held.rsplit(".", 1)[-1] in CLIP_FUNCTIONS:
                return self.apis.clip(call, positional[0] if positional else None)
            if owner is not None:
                handled = self.apis.method_call(owner, method, call, positional, keywords)
                if handled is not None:
                    return handled
            if method in ("train", "eval") and frozen_by_code(self.frame, func.value):
                return []  # a frozen teacher or EMA copy: never trained, eval on purpose
            if method in ("train", "eval") and owner is None and not call.args:
                submodule = self._submodule_key(func.value)
                if submodule is not None:
                    # ``self.classifier_head.train()`` in a model's method: a submodule of
                    # a type the linter does not know, switched with the model
                    return [Mode(self.site(call), submodule, method == "train")]
                trained = module_key(self.frame, func.value)
                if trained is not None and (
                    trained in optimized_models(self.frame) or self._used_on_self(func.value)[0]
                ):
                    # ``G_AB.eval()``: a module of a type the linter does not know, whose
                    # parameters an optimizer in sight trains, or that the instance runs
                    # (``self._model(**batch)`` in its loss method)
                    return [Mode(self.site(call), trained, method == "train")]
            if method == "backward" and not _defines(owner, "backward"):
                handed = _loss_given(owner, func.value, positional)
                if handed is not None:
                    return [self.apis.backward_of(call, handed)]
                return [self.apis.backward(call, func.value)]
            if method in CLEARING_NAMES and (owner is None or owner.cls is None):
                return [Mark("clears"), *self.apis.unresolved_clear(call)]
            if method == "step" and owner is None and self.differentiable(func.value):
                # higher's ``diffopt.step(loss)``: a differentiable update of a functional
                # view's weights through ``torch.autograd.grad``; ``.grad`` is never touched
                return [Mark("autograd"), Mark("opaque_model")]
            if method == "step" and owner is None and is_pipeline_schedule(func.value, call):
                # ``self.pp_schedule.step(arg_mbs=..., losses=...)``: the forward and backward
                # of every micro-batch through the pipeline's stages; no optimizer stepped
                return [Mark("opaque_model"), self.apis.backward_of(call, None)]
            if (
                owner is None
                and may_step_unresolved(method, func.value)
                and not self.frame.is_module_name(func.value)  # torch_xla's ``xm.mark_step()``
            ):
                # ``self.optimizers[0].step()`` may step an optimizer, unlike ``envs =
                # make_env(); envs.step()`` or ``self.env.step(actions)``
                prefix.append(Mark("opaque_model"))
                if not self.apis.known_other(func.value):
                    prefix.append(Mark("stepped"))
        return prefix + self._plain_call(call, positional, keywords)

    def _submodule_key(self, expr: cst.BaseExpression) -> str | None:
        """``self.<attr>`` in a method of a model class: the key of that attribute (None:
        not such a chain)."""
        if type(expr) is not cst.Attribute or type(expr.value) is not cst.Name:
            return None
        if expr.value.value != "self":
            return None
        me = self.frame.resolve(expr.value)
        if me is None or me.role is not Role.MODEL or me.cls is None:
            return None
        return f"{me.cls.name}.{expr.attr.value}"

    def _plain_call(
        self,
        call: cst.Call,
        positional: list[cst.BaseExpression],
        keywords: dict[str, cst.BaseExpression],
    ) -> list[Action]:
        func = call.func
        frame = self.frame
        callee = self.callee(func)
        if callee is not None and all(clips_by_hand(c[0], c[1]) for c in callee):
            # ``utils.clip_gradients(student, clip)``: a clip written out (each parameter's
            # gradient rescaled by its norm), a clip of the model handed in
            return self.apis.clip(call, positional[0] if positional else None)
        if callee is not None and all(clears_by_hand(c[0], c[1]) for c in callee):
            # ``zero_grad(self.model_params)``: each parameter's gradient zeroed by hand
            return [Mark("clears"), *self.apis.unresolved_clear(call)]
        name = called_name(call)
        if name and persists(name):
            return []  # ``self.save_checkpoint(...)``: serialises the model and optimizer
        if callee is not None:
            return self.call_defined(callee, call, positional, keywords)
        qual = self.ctx.imports.qualify(func) if type(func) in (cst.Name, cst.Attribute) else None
        if qual is not None:
            last = qual.rsplit(".", 1)[-1]
            # (``nn.utils.clip_grad_norm_`` with ``nn`` from a star import: torch's all the same)
            # ``from apex.contrib.clip_grad import clip_grad_norm_``: a drop-in replacement,
            # known as one by the module or by the parameters it is handed
            if last in CLIP_FUNCTIONS and (
                "torch" in qual
                or qual == last
                or qual.endswith(f"nn.utils.{last}")
                or qual.startswith("apex.")
                or (positional and _parameters_of_a_model(positional[0]))
            ):
                return self.apis.clip(call, positional[0] if positional else None)
            if last in CLIP_FUNCTIONS and type(func) is cst.Attribute and qual == dotted(func):
                # ``module.clip_grad_norm_(max_norm)`` (FSDP), ``optimizer.clip_grad_norm(
                # max_norm)`` (fairseq): a clip of the receiver's parameters
                return self.apis.clip(call, func.value)
            if last == "grad" and "autograd" in qual:
                return [Mark("autograd"), *self.apis.opaque_args(call)]
            if qual in {"torch.autograd.backward", "autograd.backward"}:
                loss = positional[0] if positional else None
                return [self.apis.backward_of(call, loss)]
            if last in CLEARING_NAMES:
                return [Mark("clears"), *self.apis.unresolved_clear(call)]
            if _CLIP_HELPER.match(last) and positional:
                # ``clip_gradient(decoder_optimizer, grad_clip)`` from the project's utilities,
                # timm's ``dispatch_clip_grad(params, value, mode)``: a clip of what it is
                # handed; handed a scaler or an accelerator, it may well unscale first
                handed = [self.frame.resolve(a.value) for a in call.args]
                unscales = any(
                    h is not None and h.role in (Role.SCALER, Role.ACCELERATOR) for h in handed
                )
                return self.apis.clip(call, positional[0], unscales=unscales)
        if type(func) is cst.Name:
            obj = frame.resolve_name(func.value)
            if obj is not None:
                return self.called_object(obj, call)
        if type(func) is cst.Attribute:
            held = frame.resolve(func)
            if held is not None and held.role in (Role.MODEL, Role.ENGINE, Role.LIGHTNING):
                return self.forward(held, call)  # ``self.model(x)``
            key = module_key(frame, func) if held is None else None
            if key is not None and self._used_on_self(func)[1]:
                # ``self._model(**batch)`` whose ``eval()``/``train()`` the class calls: a
                # module of a type the linter does not know, run forward
                return [Forward(self.site(call), key), *self.apis.opaque_args(call)]
        if qual is not None and harmless_call(qual):
            return []
        if qual is not None and averages_gradients(qual):
            # ``mpi_avg_grads(ac.pi)``: gradients averaged across processes in place, none
            # cleared or applied (an optimizer handed to it stays unknown)
            return [a for a in self.apis.opaque_args(call) if isinstance(a, Emit)]
        if frame.value_role(call, None) is not None:
            return []  # building an optimizer, scheduler, scaler or model does not step one
        if qual is not None and builds_engine(qual):
            return []  # ``model, *_ = deepspeed.initialize(model=model, ...)`` wraps the model
        return [*self._handed_loss(call, positional, keywords), *self.apis.opaque_args(call)]

    def _handed_loss(
        self,
        call: cst.Call,
        positional: list[cst.BaseExpression],
        keywords: dict[str, cst.BaseExpression],
    ) -> list[Action]:
        """A loss handed with an optimizer to code we cannot see (timm's
        ``loss_scaler(loss, optimizer, ...)``): a backward of that loss, as a probe."""
        args = [*positional, *keywords.values()]
        loss = next((a for a in args if type(a) is cst.Name and is_loss_name(a.value)), None)
        if loss is None:
            return []
        if not any((o := self.frame.resolve(a)) and o.role is Role.OPTIMIZER for a in args):
            return []
        backward = self.apis.backward_of(call, loss)
        return [replace(backward, probe=True)]

    def forward(self, model: Obj, call: cst.Call) -> list[Action]:
        """A model called: a forward, which takes gradients itself when the model's class
        (defined in a linted file) differentiates in its ``forward``, and records no graph of
        its own when that class has no trainable parameter."""
        if model.cls is None:
            return [Forward(self.site(call), model.key)]
        # a loss class (``FocalLoss(nn.Module)``) weighs what it is handed: the graph, if
        # any, is that of the model whose outputs it gets
        own_graph = not frozen_module(model.cls) and not _LOSS_CLASS.search(model.cls.name)
        forward = Forward(self.site(call), model.key, own_graph)
        found = model.cls.method("forward")
        if found is not None and (
            may_step(found[0].ctx, found[1]) or runs_backward(found[0].ctx, found[1], found[0])
        ):
            # a module whose forward runs a whole update (a MAML learner's meta step)
            callee = self._method(model, "forward")
            if callee is not None:
                positional, keywords = call_args(call)
                return [forward, *self.call_defined(callee, call, positional, keywords)]
        if forward_takes_gradients(model.cls):
            return [forward, Mark("autograd")]
        return [forward]

    def called_object(self, obj: Obj, call: cst.Call) -> list[Action]:
        if obj.role in (Role.MODEL, Role.ENGINE, Role.LIGHTNING):
            return self.forward(obj, call)
        if obj.role is Role.FACTORY:
            return []
        return self.apis.opaque_args(call)


_LOSS_CLASS = re.compile(r"(?i)loss$|criterion$")


def _loss_given(
    owner: Obj | None, receiver: cst.BaseExpression, positional: Sequence[cst.BaseExpression]
) -> cst.BaseExpression | None:
    """``self.strategy.backward(loss, model, optimizer)``: an object of no known role handed
    the loss to backpropagate (a tensor's own ``backward`` takes a gradient, not a loss)."""
    if owner is not None or not positional or names_a_loss(receiver):
        return None
    return positional[0] if names_a_loss(positional[0]) else None


def _defines(owner: Obj | None, method: str) -> bool:
    """Whether ``owner`` is an instance of a linted class that defines ``method`` (a ZeRO
    wrapper's ``backward(loss)``: followed like any method, not taken for a tensor's). A
    framework's own class linted with its sources (Accelerate's ``Accelerator``) keeps the
    meaning the linter gives its API."""
    return (
        owner is not None
        and owner.role is Role.INSTANCE
        and owner.cls is not None
        and constructed_role(owner.cls.name) not in _FRAMEWORK_ROLES
        and owner.cls.method(method) is not None
    )


# Objects whose ``backward`` the linter reads as the framework's own (``accelerator.backward``)
_FRAMEWORK_ROLES = (Role.ACCELERATOR, Role.SCALER, Role.ENGINE)


# helpers of other modules named for clipping gradients (not ``clip_grad_norm_`` itself)
_CLIP_HELPER = re.compile(
    r"^(dispatch_)?clip_(grad|gradient)s?(_norm|_value)?$|^clip_gradients?_?$"
)


def _parameters_of_a_model(expr: cst.BaseExpression) -> bool:
    """``model.parameters()``, ``amp.master_params(optimizer)``: the parameters a clip is
    handed."""
    return type(expr) is cst.Call and called_name(expr) in ("parameters", "master_params")
