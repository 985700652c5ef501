"""Where a loss comes from: the models whose forward a tensor depends on, followed back through
assignments and calls (``.detach()``, ``.item()`` and ``torch.no_grad()`` cut the chain)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import libcst as cst

from loopcheck.static.bodies import (
    appended_values,
    augmented_values,
    enclosing_frame,
    forward_without_grad,
    function_layout,
    named_function,
    no_grad_values,
)
from loopcheck.static.classes import ClassInfo
from loopcheck.static.frames import Frame, module_frame
from loopcheck.static.index import FileContext
from loopcheck.static.ownership import deep_copy, module_key, optimized_models
from loopcheck.static.reaching import Definition, Statement
from loopcheck.static.roles import Obj, Role
from loopcheck.static.syntax import (
    all_params,
    decorators,
    dotted,
    is_data,
    literal,
    params_of,
    returns_of,
)
from loopcheck.static.tree import is_expression, kids
from loopcheck.static.unpacking import (
    computed,
    record_field,
    tuple_place,
    unpacked_on_self,
)
from loopcheck.static.usage import read_as_settings

MODEL_ROLES = (Role.MODEL, Role.LIGHTNING, Role.ENGINE)
# Methods and attributes whose result carries no graph back to the models.
_CUT_METHODS = {"detach", "detach_", "item", "tolist", "numpy", "size", "dim", "numel", "shape"}
# Methods whose arguments say where or how a tensor is stored, never what it depends on
_PLACEMENT_METHODS = {"to", "cuda", "cpu", "type", "pin_memory"}
_CUT_ATTRIBUTES = {"data", "grad", "shape", "dtype", "device", "requires_grad", "ndim"}
# Constructors of new tensors from data (``torch.FloatTensor(batch)``): whatever they are
# given, the result has no graph
_NEW_DATA = re.compile(
    r"^torch\.((cuda\.)?([A-Z][a-z]*)?Tensor|tensor|from_numpy|zeros|ones|randn?|randint|arange"
    r"|empty|full|eye|linspace)$|^(numpy|np)\."
)
# ``replay_buffer.sample(n)``, ``memory.sample(batch_size=n)``, ``dataset.get_batch()``
_READS_DATA = re.compile(r"^(sample\w*|get_batch|next_batch|get|__next__|next|fetch)$")
_DATA_STORE = re.compile(r"(?i)(replay|buffer|memory|dataset|loader|storage|rollouts?|^rb|^rpm)$")
MAX_DEPTH = 64  # a guard: names are memoised, so real chains end long before
_MAX_HELPERS = 3  # helpers followed inside one another


@dataclass(frozen=True)
class Origin:
    """The models a tensor depends on; ``complete`` is False when part of the chain could not
    be traced (an unknown callable without model arguments, a parameter of the function)."""

    models: frozenset[str]
    complete: bool

    def __or__(self, other: Origin) -> Origin:
        return Origin(self.models | other.models, self.complete and other.complete)


NOTHING = Origin(frozenset(), True)
UNKNOWN = Origin(frozenset(), False)


def origin(frame: Frame, expr: cst.BaseExpression, at: Statement | None = None) -> Origin:
    """The models the tensor ``expr`` depends on, as seen from ``frame`` at the statement
    ``at`` (None: anywhere in the function). Cached per frame: loops run their body again."""
    cache = frame.origins
    key = (id(expr), id(at))
    found = cache.get(key)
    if found is None:
        found = cache[key] = _Tracer(frame, _handed_origins(frame)).expr(expr, 0, at)
    return found


def _handed_origins(frame: Frame) -> dict[str, Origin] | None:
    """What the caller's arguments carry, for a followed function (computed once per call)."""
    handed = frame.handed
    if handed is None:
        return None
    if frame.carried is None:
        frame.carried = _Carried(*handed)
    return frame.carried  # type: ignore[return-value]


class _Carried(dict):
    """The origins of a followed function's arguments, each computed when first asked for."""

    def __init__(self, caller: Frame, at: Statement | None, args: dict) -> None:
        super().__init__()
        self.caller, self.at, self.args = caller, at, args

    def __contains__(self, name: object) -> bool:
        return name in self.args

    def __missing__(self, name: str) -> Origin:
        found = self[name] = origin(self.caller, self.args[name], self.at)
        return found


class _Tracer:
    def __init__(
        self, frame: Frame, params: dict[str, Origin] | None = None, helpers: int = 0
    ) -> None:
        self.frame = frame
        self.helpers = helpers
        self.params = (
            params if params is not None else {}
        )  # a followed helper: what its arguments carry
        self.names: dict[tuple[int, str, int], Origin] = {}
        # the frames ``names`` has entries for, kept alive with it: the memo is keyed by a
        # frame's id, which a freed frame would hand on to the next one
        self.frames: list[Frame] = [frame]
        self._tensors: dict[str, str] | None = None

    def optimized_tensor(self, frame: Frame, node: cst.Name | cst.Attribute) -> Origin:
        """A name an optimizer takes as a parameter itself (``Adam([log_alpha])``): its own
        model, whatever it was computed from."""
        if self._tensors is None:
            # the last part of each optimized key, to rule most names out cheaply
            self._tensors = {
                k.rpartition(":")[2].rpartition(".")[2]: k for k in optimized_models(self.frame)
            }
        last = node.value if type(node) is cst.Name else node.attr.value
        if last not in self._tensors:
            return NOTHING
        key = module_key(frame, node)
        return Origin(frozenset({key}), True) if key in optimized_models(self.frame) else NOTHING

    def expr(self, node: cst.BaseExpression, depth: int, at: Statement | None = None) -> Origin:
        if depth > MAX_DEPTH:
            return UNKNOWN
        if type(node) is cst.Name:
            return self.name(self.frame, node.value, depth, at)
        if type(node) is cst.Attribute:
            if node.attr.value in _CUT_ATTRIBUTES:
                return NOTHING
            obj = self.frame.resolve(node)
            if obj is not None:
                return self.obj(obj)
            field = self.field(node, depth, at)
            if field is not None:
                return field
            kept = self.kept_on_self(node, depth)
            if kept is not None:
                return kept | self.optimized_tensor(self.frame, node)
            return self.expr(node.value, depth + 1, at) | self.optimized_tensor(self.frame, node)
        if type(node) is cst.Call:
            return self.call(node, depth, at)
        if type(node) is cst.Subscript:
            return self.expr(node.value, depth + 1, at)
        if type(node) in (cst.Lambda, cst.SimpleString, cst.Integer, cst.Float):
            return NOTHING
        out = NOTHING
        for child in _expressions(node):
            out = out | self.expr(child, depth + 1, at)
        return out

    def obj(self, obj: Obj) -> Origin:
        if obj.role in MODEL_ROLES:
            if obj.cls is not None and obj.key != obj.cls.name:
                # ``pi = PolicyNet(...)`` whose ``__init__`` builds ``self.optimizer`` over
                # ``self.parameters()``: that optimizer knows the module by its class
                return Origin(frozenset({obj.key, obj.cls.name}), True)
            return Origin(frozenset({obj.key}), True)
        return NOTHING

    def name(self, frame: Frame, name: str, depth: int, at: Statement | None) -> Origin:
        key = (id(frame), name, id(at))
        if key in self.names:
            return self.names[key]
        self.names[key] = NOTHING  # a name defined from itself adds nothing new
        found = self._name(frame, name, depth, at) | self.optimized_tensor(frame, cst.Name(name))
        for value in appended_values(frame).get(name, ()):
            # a list built by ``append`` and then ``torch.cat``-ed carries what was put in
            found = found | self.expr(value, depth + 1, None if frame is not self.frame else at)
        self.names[key] = found
        return found

    def _name(self, frame: Frame, name: str, depth: int, at: Statement | None) -> Origin:
        if name in frame.bound:
            obj = frame.bound[name]
            return self.obj(obj) if obj is not None else UNKNOWN
        if at is not None and frame is self.frame:
            defs = function_layout(frame).reaching(name, at)
            if defs is not None:
                return self.definitions(frame, name, defs, depth)
            if name in self.params:
                return self.params[name]
        elif frame.local_values.get(name) or frame.tuple_values.get(name):
            values = [
                *frame.local_values.get(name, []),
                *(v for _, v in frame.tuple_values.get(name, [])),
            ]
            defs = [Definition(v, v) for v in values]
            defs += [Definition(v, v, True) for v in augmented_values(frame).get(name, [])]
            return self.definitions(frame, name, defs, depth)
        if frame is self.frame and name in self.params:
            return self.params[name]
        obj = frame.resolve_name(name)
        if obj is not None:
            return self.obj(obj)
        if name in frame.loop_targets and at is None:
            found = self.expr(frame.loop_targets[name], depth + 1)
            return Origin(found.models, True)  # what a loader yields is data
        if name in frame.params:
            return NOTHING if _settings_parameter(frame, name) else UNKNOWN
        if frame.parent is not None:
            return self.name(frame.parent, name, depth + 1, None)
        return NOTHING

    def definitions(self, frame: Frame, name: str, defs: list[Definition], depth: int) -> Origin:
        """What the assignments of a name carry (``generator_out = G(z)``: what it was
        assigned, not what it is called)."""
        cut = no_grad_values(frame)
        out = NOTHING
        for d in defs:
            if id(d.value) in cut:
                continue
            # (the definitions read without positions hold their value in place of a
            # statement: their names are read anywhere in the function too)
            at = d.statement if frame is self.frame and d.statement is not d.value else None
            if not d.augmented and deep_copy(frame, d.value):
                # ``model_b = deepcopy(model_a)``: a model of its own, with its own parameters
                copied = frame.resolve_name(name)
                own = copied.key if copied is not None else f"{frame.scope}:{name}"
                out = out | Origin(frozenset({own}), True)
                continue
            if (
                not d.augmented
                and not d.loop_target
                and type(d.value) is cst.Call
                and not _runs_a_model(frame, d.value)
            ):
                built = frame.value_role(d.value, name)
                if built is not None and built.role in MODEL_ROLES:
                    out = out | self.obj(built)
                    continue
            found = self.expr(d.value, depth + 1, at)
            if d.loop_target:
                found = Origin(found.models, True)  # what a loader yields is data
            out = out | found
        return out

    def call(self, call: cst.Call, depth: int, at: Statement | None) -> Origin:
        func = call.func
        if type(func) in (cst.Name, cst.Attribute) and _new_data(self.frame, func):
            return NOTHING
        args = NOTHING
        for arg in call.args:
            args = args | self.expr(arg.value, depth + 1, at)
        if type(func) is cst.Attribute:
            method = func.attr.value
            if method in _CUT_METHODS:
                return NOTHING
            if method in _PLACEMENT_METHODS:
                args = NOTHING  # ``y.to(device)``: the device is no input of the tensor
            held = self.frame.resolve(func)
            if held is not None and held.role in MODEL_ROLES:
                if held.cls is not None and forward_without_grad(held.cls):
                    return NOTHING  # a frozen feature extractor: its outputs carry no graph
                return self.obj(held) | args  # ``self.generator(z)``: a submodule
            receiver = self.frame.resolve(func.value)
            if receiver is not None:
                if receiver.role in MODEL_ROLES:
                    return self.obj(receiver) | args
                if receiver.role is Role.INSTANCE and receiver.cls is not None:
                    found = receiver.cls.method(method)
                    if found is not None:
                        helper = self.returns(
                            found[0].ctx, found[1], receiver.cls, receiver, call, depth, at
                        )
                        return (
                            helper if helper is not None else self.instance_models(receiver) | args
                        )
                    key = module_key(self.frame, func)  # ``self.qf1(obs)``: a module attribute
                    return (Origin(frozenset({key}), True) if key else UNKNOWN) | args
                return args  # ``scaler.scale(loss)``, ``accelerator.gather(loss)``
            if _READS_DATA.match(method) and _DATA_STORE.search(dotted(func.value) or ""):
                return NOTHING  # ``replay_buffer.sample(batch_size)``: a batch of data
            callee = self.frame.resolve(func)
            if callee is not None and callee.role in MODEL_ROLES:
                return self.obj(callee) | args
            key = module_key(self.frame, func)
            if key is not None and key in optimized_models(self.frame):
                return Origin(frozenset({key}), True) | args  # ``ac.v(obs)``, ``ac.v`` optimized
            return self.expr(func.value, depth + 1, at) | args
        if type(func) is cst.Name:
            callee = self.frame.resolve_name(func.value)
            if callee is not None and callee.role in MODEL_ROLES:
                if callee.cls is not None and forward_without_grad(callee.cls):
                    return NOTHING
                # (``torch.compile(WorldModelLoss(world_model))``: and what it was built over;
                # ``critics = self.target if use_target else self.online``: either of them)
                chosen = self.name(self.frame, func.value, depth + 1, at)
                return self.obj(callee) | chosen | self.models_handed(func) | args
            if callee is not None and callee.role is Role.INSTANCE and callee.cls is not None:
                return self.instance_models(callee) | args
            node = named_function(self.frame, func.value)
            if node is not None:
                helper = self.returns(self.frame.ctx, node, None, None, call, depth, at)
                if helper is not None:
                    return helper
                # what it returns depends on its arguments, and on whatever models it reaches
                return args if args.models else Origin(args.models, False)
            key = module_key(self.frame, func) if callee is None else None
            if key is not None:
                # ``critic = Critic(); critic(x)``; a loss module built over models runs them
                # (``world_model_loss = DreamerModelLoss(world_model)``)
                return Origin(frozenset({key}), True) | self.models_handed(func) | args
            return args
        return args | UNKNOWN

    def field(self, node: cst.Attribute, depth: int, at: Statement | None) -> Origin | None:
        """``losses.qf2_loss`` where ``losses, stats = self.compute_loss(batch)`` returns a
        record built with ``qf2_loss=...`` (a named tuple): that field's origin alone."""
        if type(node.value) is not cst.Name or at is None or self.helpers >= _MAX_HELPERS:
            return None
        name = node.value.value
        defs = function_layout(self.frame).reaching(name, at)
        if not defs or len(defs) != 1 or type(defs[0].value) is not cst.Call:
            return None
        call = defs[0].value
        index = tuple_place(self.frame, name, call)
        func = call.func
        if type(func) is cst.Attribute:
            receiver = self.frame.resolve(func.value)
            if receiver is None or receiver.role is not Role.INSTANCE or receiver.cls is None:
                return None
            found = receiver.cls.method(func.attr.value)
            if found is None:
                return None
            picked = (found[0].ctx, found[1], receiver.cls, receiver)
        elif type(func) is cst.Name and (helper := named_function(self.frame, func.value)):
            picked = (self.frame.ctx, helper, None, None)
        else:
            return None
        pick = (index, node.attr.value)
        return self.returns(*picked, call, depth, defs[0].statement, pick)

    def returns(
        self,
        ctx: FileContext,
        node: cst.FunctionDef,
        cls: ClassInfo | None,
        self_obj: Obj | None,
        call: cst.Call,
        depth: int,
        at: Statement | None,
        pick: tuple[int | None, str | None] | None = None,
    ) -> Origin | None:
        """What a helper of the linted files returns, its parameters bound to what the
        arguments carry (``compute_loss(model, batch)``, ``self.classification_loss(...)``);
        with ``pick``, only the field of a record (the element of a returned tuple first)."""
        if self.helpers >= _MAX_HELPERS or node is self.frame.func:
            return None
        params = params_of(node)
        bound: dict[str, Obj | None] = {}
        carried: dict[str, Origin] = {}
        if cls is not None and params and params[0].name.value in {"self", "cls"}:
            bound[params[0].name.value] = self_obj
            params = params[1:]
        positional = [a.value for a in call.args if a.keyword is None and not a.star]
        keywords = {a.keyword.value: a.value for a in call.args if a.keyword is not None}
        if any(a.star for a in call.args):
            return None
        for param, arg in zip(params, positional, strict=False):
            carried[param.name.value] = self.expr(arg, depth + 1, at)
            bound[param.name.value] = self.frame.resolve(arg)
        for name, arg in keywords.items():
            carried[name] = self.expr(arg, depth + 1, at)
            bound[name] = self.frame.resolve(arg)
        scope = f"{cls.name}.{node.name.value}" if cls is not None else node.name.value
        frame = Frame(
            ctx,
            node,
            cls,
            {k: v for k, v in bound.items() if v is not None},
            enclosing_frame(self.frame, node, ctx),  # a closure sees its function's names
            scope,
        )
        tracer = _Tracer(frame, carried, self.helpers + 1)
        out = NOTHING
        for statement, value in returns_of(node):
            chosen = (
                [(value, statement)]
                if pick is None
                else record_field(frame, value, statement, pick)
            )
            if chosen is None:
                return None
            for expr, where in chosen:
                out = out | tracer.expr(expr, depth + 1, where)
        return out

    def models_handed(self, func: cst.Name) -> Origin:
        """The models handed to the calls that built the object ``func`` names."""
        keys: set[str] = set()
        complete = True
        built = [v for v in self.frame.local_values.get(func.value, ()) if type(v) is cst.Call]
        for arg in (a for call in built for a in call.args):
            if type(arg.value) in (cst.Name, cst.Attribute):
                found = self.frame.resolve(arg.value)
                if found is not None and found.role in MODEL_ROLES:
                    keys |= self.obj(found).models
                    continue
                key = module_key(self.frame, arg.value)  # a module an optimizer in sight trains
                if key is not None and key in optimized_models(self.frame):
                    keys.add(key)
                elif found is None and key is None and _built_object(self.frame, arg.value):
                    # ``WorldModelLoss(world_model)`` with a model we cannot name (made by a
                    # factory): the loss module may run it
                    complete = False
        return Origin(frozenset(keys), complete)

    def kept_on_self(self, node: cst.Attribute, depth: int) -> Origin | None:
        """``self.output`` where a method of the class stored a tensor (``self.output =
        self.net_g(self.lq)``, BasicSR's and pix2pix's GAN models): what the stored values
        carry, each read in the method that stores it. None: no such attribute."""
        frame = self.frame
        cls = frame.cls
        if cls is None or type(node.value) is not cst.Name or node.value.value != "self":
            return None
        attr = node.attr.value
        found = cls.method(attr)
        if found is not None and "property" in decorators(found[1]):
            # SAC's ``self.alpha``, a property returning ``self.log_alpha.exp()``
            me = frame.bound.get("self")
            read = cst.Call(func=node)
            return self.returns(found[0].ctx, found[1], cls, me, read, depth, None)
        stored = [(info, v, m) for info in cls.mro() for v, m in info.attr_values.get(attr, ())]
        unpacked = [u for info in cls.mro() for u in unpacked_on_self(info).get(attr, ())]
        if not unpacked and (not stored or not any(computed(v) for _, v, _ in stored)):
            return None  # never stored from a call: a setting, a counter, a list
        memo = (id(cls), "self." + attr, -1)
        if memo in self.names:
            return self.names[memo]
        self.names[memo] = NOTHING  # ``self.x = self.x + y`` adds nothing new
        out = NOTHING
        for info, value, method in stored:
            out = out | self._there(info, method).expr(value, depth + 1, None)
        for info, method, call, index in unpacked:
            # ``self.z, self.mu, self.logvar = self.encode(x)``: the element of what it returns
            tracer = self._there(info, method)
            picked = tracer.element_returned(call, index, depth)
            out = out | (picked if picked is not None else tracer.expr(call, depth + 1, None))
        self.names[memo] = out
        return out

    def _there(self, info: ClassInfo, method: cst.FunctionDef) -> _Tracer:
        """A tracer reading ``method`` of the class, sharing this one's memo: ``self.router =
        self.router.cuda()`` in every method would otherwise read each store once per path
        through the others."""
        if method is self.frame.func:
            return self
        scope = f"{info.name}.{method.name.value}"
        me = self.frame.bound.get("self")
        there = Frame(info.ctx, method, info, {"self": me}, module_frame(info.ctx), scope)
        tracer = _Tracer(there, helpers=self.helpers)
        self.frames.append(there)
        tracer.frames = self.frames
        tracer.names = self.names
        return tracer

    def element_returned(self, call: cst.Call, index: int, depth: int) -> Origin | None:
        """Element ``index`` of what a method of ``self`` or a helper returns; None: not a
        call the linted files define, or not a tuple it returns."""
        func = call.func
        cls = self.frame.cls
        if (
            type(func) is cst.Attribute
            and type(func.value) is cst.Name
            and func.value.value == "self"
            and cls is not None
        ):
            found = cls.method(func.attr.value)
            if found is None:
                return None
            me = self.frame.bound.get("self")
            return self.returns(found[0].ctx, found[1], cls, me, call, depth, None, (index, None))
        if type(func) is cst.Name and (helper := named_function(self.frame, func.value)):
            return self.returns(
                self.frame.ctx, helper, None, None, call, depth, None, (index, None)
            )
        return None

    def instance_models(self, obj: Obj) -> Origin:
        """The models an instance of a linted class holds (a trainer's ``self.model``)."""
        cls = obj.cls
        assert cls is not None
        keys: set[str] = set()
        for info in cls.mro():
            for attr in info.attr_values:
                found = self.frame.attribute(cls, attr)
                if found is not None and found.role in MODEL_ROLES:
                    keys.add(found.key)
        return Origin(frozenset(keys), bool(keys))


_SCALAR_NAME = re.compile(
    r"(?i)(^|_)(size|sizes|num|count|steps?|lr|rate|epochs?|iters?|iterations?|idx|index|seed"
    r"|dim|len|max|min|tau|gamma|eps|beta|alpha|n|k|freq|interval|delay|device|dtype|mode"
    r"|name|path|flag|verbose|env|config|cfg|args|kwargs)$"
)
_SCALAR_TYPES = {"int", "float", "bool", "str", "Path", "device", "dtype"}


def _settings_parameter(frame: Frame, name: str) -> bool:
    """A parameter that holds a setting, not a tensor: a literal default (``batch_size=100``),
    a scalar annotation, or a name such settings have."""
    annotation = frame.params.get(name)
    if annotation is not None and annotation.rsplit(".", 1)[-1] in _SCALAR_TYPES:
        return True
    func = frame.func
    if func is not None:
        for param in all_params(func):
            if param.name.value == name and param.default is not None:
                if literal(param.default)[0] or type(param.default) is cst.SimpleString:
                    return True
    if _SCALAR_NAME.search(name) or _DATA_NAME.search(name):
        return True
    # ``opt.trg_pad_idx``: a namespace of options (the attributes read say so)
    return name in _NAMESPACE_NAMES and read_as_settings(frame.ctx, frame.func, name)


# Parameters that hand in data: what they yield depends on no model (``next(data_iter)``)
_DATA_NAME = re.compile(
    r"(?i)(^|_)(loader|dataloader|dataset|data_iter|iterator|batch|batches|minibatch)$"
    r"|^(train|training|val|valid"
    r"|validation|test|eval)_data$"
)
_NAMESPACE_NAMES = {"opt", "opts", "options", "hparams", "flags", "FLAGS"}


def _runs_a_model(frame: Frame, call: cst.Call) -> bool:
    """``pred_fake = self.netD(fake_B)``: a model run forward, whose output depends on its
    inputs too (not a model built, as ``netD = Discriminator(cfg)`` is)."""
    if type(call.func) not in (cst.Name, cst.Attribute):
        return False
    held = frame.resolve(call.func)
    return held is not None and held.role in MODEL_ROLES


def _expressions(node: cst.CSTNode) -> list[cst.BaseExpression]:
    """The expressions directly inside a compound expression (operands, elements, arguments)."""
    out: list[cst.BaseExpression] = []
    stack = list(kids(node))
    while stack:
        child = stack.pop()
        if is_expression(child):
            out.append(child)  # type: ignore[arg-type]
        else:
            stack.extend(kids(child))
    return out


def _new_data(frame: Frame, func: cst.Name | cst.Attribute) -> bool:
    """``torch.FloatTensor(state_batch)``, ``torch.tensor(rewards)``, ``np.array(x)``: a new
    tensor made of data, with no graph whatever it was made from."""
    qual = frame.ctx.imports.qualify(func)
    return qual is not None and bool(_NEW_DATA.match(qual))


def _built_object(frame: Frame, value: cst.BaseExpression) -> bool:
    """A name bound to what a call built (``world_model, env = make_world_model(cfg)``), not
    a setting or a literal."""
    if type(value) is not cst.Name:
        return False
    name = value.value
    return name in frame.tuple_values or any(
        type(v) is cst.Call and not is_data(v) for v in frame.local_values.get(name, ())
    )
