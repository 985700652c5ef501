"""What stands for a module and what an optimizer owns: keys for modules held by name or
attribute, the models whose parameters an optimizer is built from (also through Lightning's
``configure_optimizers``), the instance that owns an optimizer its class builds, and the call
that built an object."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import libcst as cst

from loopcheck.static.roles import Obj, Role, role_from_name
from loopcheck.static.syntax import (
    all_params,
    dotted,
    is_data,
    literal,
    params_of,
    returns_of,
    roots_of,
)
from loopcheck.static.tree import walk

if TYPE_CHECKING:
    from loopcheck.static.classes import ClassInfo
    from loopcheck.static.frames import Frame
    from loopcheck.static.index import FileContext

_MODEL_ROLES = (Role.MODEL, Role.LIGHTNING, Role.ENGINE)


def constructor_of(frame: Frame, expr: cst.BaseExpression) -> cst.Call | None:
    """The call that built what ``expr`` names (``GradScaler(enabled=False)``,
    ``Accelerator(gradient_accumulation_steps=4)``), when the code shows one."""
    if type(expr) is cst.Name:
        current: Frame | None = frame
        while current is not None:
            for value in current.local_values.get(expr.value, ()):
                if type(value) is cst.Call:
                    return value
            if expr.value in current.params or expr.value in current.local_values:
                return None
            current = current.parent
        return None
    if (
        type(expr) is cst.Attribute
        and type(expr.value) is cst.Name
        and expr.value.value == "self"
        and frame.cls is not None
    ):
        for _, value, _ in frame.cls.attribute_values(expr.attr.value):
            if type(value) is cst.Call:
                return value
    return None


def optimized_models(frame: Frame | None) -> frozenset[str]:
    """The models of the optimizers visible in a frame and the frames around it (once per
    frame: the optimizers in sight do not change while it runs)."""
    if frame is None:
        return frozenset()
    if frame.optimized is None:
        found: set[str] = set(optimized_models(frame.parent))
        for opt in frame.optimizers():
            found |= opt.models
        frame.optimized = frozenset(found)
    return frame.optimized


def module_key(frame: Frame, expr: cst.BaseExpression) -> str | None:
    """A key for an object of no known role that may be a module, so that an optimizer
    built from its parameters and a loss computed by calling it meet: ``frame.qf1``, or a
    name built by a constructor we do not know (``critic = Critic(...)``)."""
    if (
        type(expr) is cst.Attribute
        and type(expr.value) is cst.Name
        and expr.value.value == "self"
        and frame.cls is not None
    ):
        if frame.cls.method(expr.attr.value) is None:
            return f"{frame.cls.name}.{expr.attr.value}"
        return None
    if type(expr) is cst.Attribute and type(expr.value) is cst.Name:
        # ``ac.v``: a submodule of such an object (an actor-critic's value network)
        owner = module_key(frame, expr.value)
        return f"{owner}.{expr.attr.value}" if owner is not None else None
    if type(expr) is not cst.Name:
        return None
    name = expr.value
    values = frame.local_values.get(name)
    if values:
        if all(type(v) is cst.Call and not is_data(v) for v in values):
            return f"{frame.scope}:{name}"
        return None
    if name in frame.params and name not in frame.bound:
        # ``def train(G, D, ...)``: modules passed in; ``self.generator = generator`` in the
        # method: the module the instance keeps, known by that attribute elsewhere
        return frame.kept_as(name) or f"{frame.scope}:{name}"
    local = name in frame.params or name in frame.tuple_values or name in frame.loop_targets
    if not local and name not in frame.bound and frame.parent is not None:
        return module_key(frame.parent, expr)
    return None


def configured_models(frame: Frame, owner: Obj, index: int | None) -> frozenset[str]:
    """The models of the optimizer Lightning's ``frame.optimizers()`` hands back, read from
    what ``configure_optimizers`` returns (element ``index`` of a tuple or list)."""
    cls = owner.cls
    found = cls.method("configure_optimizers") if cls is not None else None
    if found is None:
        return frozenset()
    info, method = found
    frame = type(frame)(info.ctx, method, cls, {}, _module_frame(info.ctx), f"{cls.name}.configure")
    for node in walk(method.body):
        if type(node) is not cst.Return or node.value is None:
            continue
        value = node.value
        if (
            type(value) in (cst.Tuple, cst.List)
            and len(value.elements) == 2
            and type(value.elements[0].value) in (cst.Tuple, cst.List)
        ):
            value = value.elements[0].value  # ``return [opt_g, opt_d], [sched_g, sched_d]``
        if type(value) in (cst.Tuple, cst.List) and index is not None:
            if index >= len(value.elements):
                continue
            value = value.elements[index].value
        elif index is not None:
            continue
        value = _optimizer_entry(value)
        obj = frame.value_role(value, None)
        if obj is not None and obj.role is Role.OPTIMIZER:
            return obj.models
    return frozenset()


def _optimizer_entry(value: cst.BaseExpression) -> cst.BaseExpression:
    """``{"optimizer": opt, "lr_scheduler": ...}``: the optimizer of a Lightning dict."""
    if type(value) is cst.Dict:
        for element in value.elements:
            key = getattr(element, "key", None)
            if type(key) is cst.SimpleString and key.evaluated_value == "optimizer":
                return element.value
    return value


def models_in(frame: Frame, expr: cst.CSTNode) -> frozenset[str]:
    """Keys of the models whose parameters an expression (an optimizer constructor's
    arguments, a parameter group list) reaches, through local names."""
    keys: set[str] = set()
    seen: set[str] = set()
    stack: list[cst.CSTNode] = [expr]
    while stack:
        node = stack.pop()
        receivers = {id(r) for r in _parameter_owners(node)}
        receivers |= {id(r) for r in _handed_to_parameter_helpers(frame, node)}
        parts = _submodules(frame, node)
        keys |= set(parts.values())
        for tensor in _tensor_elements(node):
            # ``Adam([log_alpha])``: a tensor optimized by itself (a SAC temperature, the
            # weights of a model written by hand) is its own model
            if frame.resolve(tensor) is None and (key := module_key(frame, tensor)):
                keys.add(key)
        for root in roots_of(node):
            obj = frame.resolve(root) if type(root) is not cst.Call else None
            if obj is not None and obj.role in _MODEL_ROLES:
                keys.add(obj.key)
            elif obj is not None and obj.role is Role.INSTANCE and obj.cls is not None:
                keys.add(obj.key)
            elif obj is None:
                known = id(root) in receivers and id(root) not in parts
                key = module_key(frame, root) if known else None
                if key is not None:
                    keys.add(key)
                values = frame.local_values.get(root.value, ()) if type(root) is cst.Name else ()
                if any(deep_copy(frame, v) for v in values):
                    # ``model_b = deepcopy(model_a)``: parameters of its own
                    keys.add(module_key(frame, root) or f"{frame.scope}:{root.value}")  # type: ignore[attr-defined]
                    continue
                if type(root) is cst.Name and root.value not in seen:
                    seen.add(root.value)
                    stack.extend(frame.local_values.get(root.value, ()))
                    stack.extend(v for _, v in frame.tuple_values.get(root.value, ()))
    return frozenset(keys)


def deep_copy(frame: Frame, value: cst.BaseExpression) -> bool:
    """``copy.deepcopy(x)``: new tensors, on no graph of ``x``'s and among none of its
    parameters."""
    if type(value) is not cst.Call or type(value.func) not in (cst.Name, cst.Attribute):
        return False
    return frame.ctx.imports.qualify(value.func) == "copy.deepcopy"


_PARAMETER_METHODS = {"parameters", "named_parameters", "modules", "children"}


def _submodules(frame: Frame, expr: cst.CSTNode) -> dict[int, str]:
    """``ac.v.parameters()`` on an object of no known role: the submodule's key (the same
    key a call ``ac.v(obs)`` gets), by the id of the object's name."""
    out: dict[int, str] = {}
    for node in walk(expr):
        if not (type(node) is cst.Attribute and node.attr.value in _PARAMETER_METHODS):
            continue
        part = node.value
        if type(part) is not cst.Attribute or type(part.value) is not cst.Name:
            continue
        if part.value.value == "self" or frame.resolve(part) or frame.resolve(part.value):
            continue
        key = module_key(frame, part)
        if key is not None:
            out[id(part.value)] = key
    return out


def _tensor_elements(expr: cst.CSTNode) -> list[cst.BaseExpression]:
    """The names listed as parameters themselves in an optimizer's arguments: ``[w, b]``,
    ``[{"params": [log_alpha]}]``, ``[self.log_alpha]`` (not a module's ``parameters()``)."""
    out: list[cst.BaseExpression] = []
    for node in walk(expr):
        if type(node) not in (cst.List, cst.Tuple):
            continue
        for element in node.elements:
            if type(element) is not cst.Element:
                continue  # ``*model.parameters()``
            value = element.value
            if type(value) is cst.Name or (
                type(value) is cst.Attribute
                and type(value.value) is cst.Name
                and value.value.value == "self"
            ):
                out.append(value)
    return out


def _parameter_owners(expr: cst.CSTNode) -> list[cst.BaseExpression]:
    """The roots of ``X.parameters()``-like receivers in an expression: what an optimizer's
    parameters belong to (not the learning rate or other settings it is given)."""
    out: list[cst.BaseExpression] = []
    for node in walk(expr):
        if type(node) is cst.Attribute and node.attr.value in _PARAMETER_METHODS:
            out.extend(roots_of(node.value))
    return out


def _handed_to_parameter_helpers(frame: Frame, expr: cst.CSTNode) -> list[cst.BaseExpression]:
    """The roots of the arguments handed to a function of this file that takes their
    parameters (``get_trainable_params(dalle)``, whose body filters ``model.parameters()``)."""
    out: list[cst.BaseExpression] = []
    for node in walk(expr):
        if type(node) is not cst.Call or type(node.func) is not cst.Name:
            continue
        func = frame.ctx.functions.get(node.func.value)
        if func is None:
            continue
        owners = frame.ctx.remember(
            "parameter owners", func, lambda f=func: {dotted(r) for r in _parameter_owners(f.body)}
        )
        for param, arg in zip(params_of(func), node.args, strict=False):
            if arg.keyword is None and not arg.star and param.name.value in owners:
                out.extend(roots_of(arg.value))
    return out


def handed_models(frame: Frame, call: cst.Call) -> frozenset[str]:
    """The models of the optimizers handed to a call (``ZeroWrapper(opt)``; ``opt =
    ZeroWrapper(opt)``: what ``opt`` held before)."""
    models: set[str] = set()
    for arg in call.args:
        value = arg.value
        if type(value) is cst.Name and any(
            v is call for v in frame.local_values.get(value.value, ())
        ):
            held = [
                frame.value_role(v, value.value)
                for v in frame.local_values[value.value]
                if v is not call
            ]
        elif type(value) in (cst.Name, cst.Attribute):
            held = [frame.resolve(value)]
        else:
            continue
        for obj in held:
            if obj is not None and obj.role is Role.OPTIMIZER:
                models |= obj.models
    return frozenset(models)


def _module_frame(ctx: FileContext) -> Frame:
    from loopcheck.static.frames import module_frame  # frames uses this module

    return module_frame(ctx)


def per_instance(owner: Obj, found: Obj, attr: str) -> Obj:
    """An optimizer that each instance of a class builds over its own parameters
    (``self.optimizer = Adam(self.parameters())``), held by one named instance (``q1``, not
    the class's ``self``): keyed by that instance, so that twin critics ``q1 = QNet();
    q2 = QNet()`` have an optimizer each."""
    cls = owner.cls
    assert cls is not None
    if found.role is not Role.OPTIMIZER or owner.key in (cls.name, f"{cls.name}.self"):
        return found
    if found.key == f"{cls.name}.{attr}" and _handed_to_constructor(cls, attr):
        # ``base = ZeroWrapper(opt_a); dist = ZeroWrapper(opt_b)``: each instance holds the
        # optimizer it was handed, not one that every instance shares
        return replace(found, key=f"{owner.key}.{attr}", models=owner.models or found.models)
    if found.key != f"{cls.name}.{attr}" or not _over_own_parameters(cls, attr):
        return found  # handed in, or built over other objects' parameters
    models = frozenset(owner.key if m == cls.name else m for m in found.models)
    return replace(found, key=f"{owner.key}.{attr}", models=models or frozenset({owner.key}))


def _handed_to_constructor(cls: ClassInfo, attr: str) -> bool:
    """Whether ``self.<attr>`` is only ever assigned a parameter of the ``__init__`` that
    assigns it (an optimizer wrapper's ``self.optim = optim``)."""
    values = cls.attribute_values(attr)
    return bool(values) and all(
        method is not None
        and method.name.value == "__init__"
        and type(value) is cst.Name
        and any(param.name.value == value.value for param in all_params(method))
        for _, value, method in values
    )


def _over_own_parameters(cls: ClassInfo, attr: str) -> bool:
    """Whether a module class builds ``self.<attr>`` over its own parameters, and only so
    (``Adam(self.parameters())``; not over a network it was handed)."""
    values = [value for _, value, _ in cls.attribute_values(attr)]
    return (
        cls.is_module
        and bool(values)
        and all(
            type(value) is cst.Call
            and any(
                type(node) is cst.Attribute
                and node.attr.value == "parameters"
                and type(node.value) is cst.Name
                and node.value.value == "self"
                for node in walk(value)
            )
            for value in values
        )
    )


def optimizer_beside(frame: Frame, name: str) -> frozenset[str]:
    """The optimizer unpacked from the same call as the scheduler ``name`` (``optimizer,
    scheduler = make_optimizer(cfg, model)``): the one it schedules, when it is alone."""
    keys: set[str] = set()
    for _, value in frame.tuple_values.get(name, ()):
        if type(value) is not cst.Call:
            continue
        for other, places in frame.tuple_values.items():
            if other != name and any(v is value for _, v in places):
                # by its name, as an unpacked local of an unknown call is resolved (not by
                # resolving it: that may unpack the same call again, and recurse)
                if role_from_name(other) is Role.OPTIMIZER:
                    keys.add(f"{frame.scope}:{other}")
    # several optimizers beside it (``model, opt, sched, ddp_model, ddp_opt, ddp_sched =
    # setup()``): which one it schedules is unknown
    return frozenset(keys) if len(keys) == 1 else frozenset()


def class_unpacked(frame: Frame, name: str) -> ClassInfo | None:
    """The class (of the linted files) of what ``name`` is unpacked from a call of a function
    of this file: ``model, opt, sched = prepare(args)`` where ``prepare`` builds
    ``sched = PolyWarmUpScheduler(opt, ...)`` and returns it in that place."""
    for index, value in frame.tuple_values.get(name, ()):
        if type(value) is not cst.Call or type(value.func) is not cst.Name:
            continue
        func = frame.ctx.functions.get(value.func.value)
        if func is None:
            continue
        info = frame.ctx.function_info(func)
        for _, returned in returns_of(func):
            if type(returned) is not cst.Tuple:
                continue
            if index >= len(returned.elements):
                continue
            element = returned.elements[index].value
            if type(element) is not cst.Name:
                continue
            for built in info.local_values.get(element.value, ()):
                if type(built) is cst.Call and type(built.func) in (cst.Name, cst.Attribute):
                    qual = frame.ctx.imports.qualify(built.func)
                    found = frame.ctx.resolve_class(qual) if qual is not None else None
                    if found is not None:
                        return found
    return None


def built_by_class_handed_in(frame: Frame, name: str) -> frozenset[str]:
    """The models of an optimizer named ``name`` built by a class handed in as a parameter
    (``optim = optim_cls(model.parameters(), **kwargs)``). Not any call: ``optim_full_sd =
    get_full_optimizer_state_dict(optim)`` builds no optimizer. Read once per name: the
    models may name the optimizer again."""
    if name not in frame.local_values or name in frame.building:
        return frozenset()
    frame.building.add(name)
    try:
        built = [
            v
            for v in frame.local_values[name]
            if type(v) is cst.Call and type(v.func) is cst.Name and v.func.value in frame.params
        ]
        return frozenset().union(*(models_in(frame, v) for v in built))
    finally:
        frame.building.discard(name)


def frozen_by_code(frame: Frame, expr: cst.BaseExpression) -> bool:
    """Whether the code freezes the module ``expr`` names and never unfreezes it
    (``teacher.requires_grad_(False)``, or ``p.requires_grad = False`` for each of its
    parameters): a teacher, an EMA copy or a target network, never trained, whose eval mode is
    deliberate. A ``self`` attribute is read over its class, a name over its function."""
    chain = dotted(expr)
    if chain is None:
        return False
    if chain.startswith("self.") and frame.cls is not None:
        scope: cst.CSTNode = frame.cls.node
    else:
        scope = frame.func if frame.func is not None else frame.ctx.module
    settings = frame.ctx.remember("requires-grad settings", scope, lambda: _requires_grad(scope))
    return settings.get(chain) is False


def _requires_grad(scope: cst.CSTNode) -> dict[str, bool | None]:
    """What each module's ``requires_grad`` is set to under ``scope``: False when every setting
    freezes it, None when one may unfreeze it."""
    found: dict[str, bool | None] = {}

    def note(chain: str | None, value: cst.BaseExpression | None) -> None:
        if chain is None:
            return
        is_literal, setting = literal(value) if value is not None else (True, True)
        frozen = is_literal and setting is False
        found[chain] = False if frozen and found.get(chain, False) is False else None

    for node in walk(scope):
        if type(node) is cst.Call and type(node.func) is cst.Attribute:
            if node.func.attr.value == "requires_grad_":
                value = node.args[0].value if node.args else None
                note(dotted(node.func.value), value)
        elif type(node) is cst.For and type(node.target) is cst.Name:
            owner = _parameters_of(node.iter)
            if owner is None:
                continue
            param = node.target.value
            for inner in walk(node.body):
                if type(inner) is cst.Assign and len(inner.targets) == 1:
                    target = inner.targets[0].target
                    if (
                        type(target) is cst.Attribute
                        and target.attr.value == "requires_grad"
                        and dotted(target.value) == param
                    ):
                        note(owner, inner.value)
    # ``model.requires_grad_(False); model.fc.requires_grad_(True)``: a linear probe whose head
    # trains, and that the code also puts in train mode (its fine-tuning branch), is no
    # frozen model; always frozen, its eval mode is deliberate
    switched = {
        dotted(node.func.value)
        for node in walk(scope)
        if type(node) is cst.Call
        and type(node.func) is cst.Attribute
        and node.func.attr.value == "train"
    }
    for chain, setting in list(found.items()):
        if setting is not False:
            parts = chain.split(".")
            for end in range(1, len(parts)):
                prefix = ".".join(parts[:end])
                if prefix in found and prefix in switched:
                    found[prefix] = None
    return found


def _parameters_of(expr: cst.BaseExpression) -> str | None:
    """``teacher.parameters()`` (or ``named_parameters()``, unpacked): the module's chain."""
    if type(expr) is cst.Call and type(expr.func) is cst.Attribute:
        if expr.func.attr.value == "parameters":
            return dotted(expr.func.value)
    return None
