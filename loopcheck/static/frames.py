"""What names mean inside one function analysed in one context: the role of every name,
attribute chain, container element and call result (a :class:`Frame` per analysed call)."""

from __future__ import annotations

import re
from dataclasses import replace

import libcst as cst

from loopcheck.static.classes import ClassInfo
from loopcheck.static.index import FileContext
from loopcheck.static.ownership import (
    built_by_class_handed_in,
    class_unpacked,
    configured_models,
    handed_models,
    models_in,
    optimizer_beside,
    per_instance,
)
from loopcheck.static.roles import (
    Obj,
    Role,
    builds_engine,
    constructed_role,
    is_model_method,
    is_model_wrapper,
    role_from_name,
)
from loopcheck.static.syntax import (
    DATA_CALLS,
    call_args,
    dotted,
    is_data,
    literal_index,
)
from loopcheck.static.usage import read_as_settings, stepped_receivers, used_as_engine

_MODEL_ROLES = (Role.MODEL, Role.LIGHTNING, Role.ENGINE)
# Roles an attribute chain may announce by its last name (``self.policy.optimizer``).
_CHAIN_ROLES = (Role.OPTIMIZER, Role.SCHEDULER, Role.SCALER)
# Objects that hold settings: ``args.optimizer`` is a string, ``cfg.optim`` a section.
_SETTINGS = re.compile(
    r"(?i)^(args|arguments|opts?|options|flags|cfg|config|conf|configs|hparams|hps?|params"
    r"|settings|hyperparams|kwargs|self\.(args|cfg|config|conf|hparams|opts?|options))$"
    r"|_(args|cfg|config|conf|hparams|opts|options|settings)$"
)
# Calls that return settings or data, never an optimizer, whatever the variable is called.
# functions that hand back the object they check (``none_throws(x)``, ``cast(T, x)``)
_PASS_THROUGH = {"none_throws", "not_none", "assert_not_none", "cast", "unwrap_optional"}
_CONTAINER_METHODS = {"values", "items", "__iter__", "get", "pop"}
_OPTIMIZER_MODULE_PREFIXES = (
    "torch.optim",
    "bitsandbytes.optim",
    "bnb.optim",
    "apex.optimizers",
    "torch_optimizer",
    "timm.optim",
    "transformers.optimization",
)


class Frame:
    """Name resolution inside one function (or the module body) as analysed in one context."""

    def __init__(
        self,
        ctx: FileContext,
        func: cst.FunctionDef | None,
        cls: ClassInfo | None,
        bound: dict[str, Obj | None],
        parent: Frame | None,
        scope: str,
    ) -> None:
        self.ctx = ctx
        self.func = func
        self.cls = cls
        self.bound = bound
        self.parent = parent  # the module frame, for globals (or the enclosing function's)
        self.scope = scope
        info = ctx.function_info(func)
        self.local_values = info.local_values
        self.tuple_values = info.tuple_values
        self.local_defs = info.local_defs
        self.params = info.params
        self.loop_targets = info.loop_targets
        self._cache: dict[str, Obj | None] = {}
        self._busy: set[str] = set()
        self.building: set[str] = set()  # optimizers whose models are being read (ownership)
        self.constants: dict[str, object] = {}  # parameters known to hold a literal value
        # parameters holding a condition of the caller: (its expression, the caller's file)
        self.conditions: dict[str, tuple[cst.BaseExpression, FileContext]] = {}
        self.maybe_none: frozenset[str] = frozenset()  # see ``Follow.maybe_none``
        self.divided: dict[str, bool | None] = {}  # see ``Follow.divided``
        self.handed_at: object = None  # see ``Follow.site``
        self.called_at: object = None  # see ``Follow.called_at``
        # a followed function's other arguments: (the caller's frame, its statement, the
        # argument of each parameter), so that a loss handed in has the caller's origin
        self.handed: tuple[Frame, object, dict[str, cst.BaseExpression]] | None = None
        self.carried: dict[str, object] | None = None  # their origins, once asked for
        self.optimized: frozenset[str] | None = None  # the models of the optimizers in sight
        self.origins: dict[tuple[int, int], object] = {}  # loss origins (see dataflow)
        self.graphs: dict[tuple, bool] = {}  # names surely holding a graph (see kept)
        self._optimizers: list[Obj] | None = None
        self._values: dict[tuple[int, str | None], Obj | None] = {}

    # names

    def resolve_name(self, name: str) -> Obj | None:
        if name in self._cache:
            return self._cache[name]
        if name in self._busy:
            return self._fallback(name)
        self._busy.add(name)
        try:
            found = self._resolve_name(name)
        finally:
            self._busy.discard(name)
        self._cache[name] = found
        return found

    def _resolve_name(self, name: str) -> Obj | None:
        if name in self.bound:
            return self.bound[name]
        if name in self.local_values:
            # ``model = build(); model, *_ = deepspeed.initialize(model=model, ...)``: the
            # name ends up holding the engine that wraps the model
            for index, value in self.tuple_values.get(name, ()):
                found = self.tuple_role(value, index, name)
                if found is not None and found.role is Role.ENGINE:
                    return found
        first = None
        for value in self.local_values.get(name, ()):
            found = self.value_role(value, name)
            if found is not None and found.role is Role.SCALER:
                # ``GradScaler()`` on one branch, a do-nothing stand-in on the other: the
                # loss may be scaled, and what bypasses the scaler is wrong on that path
                return found
            if first is None:
                first = found
        if first is not None:
            return first
        for index, value in self.tuple_values.get(name, ()):
            found = self.tuple_role(value, index, name)
            if found is not None:
                return found
        if name in self.loop_targets and name not in self.local_values:
            element = self.element_role(self.loop_targets[name])
            if element is not None:
                return element
        return self._fallback(name)

    def _fallback(self, name: str) -> Obj | None:
        """A name whose value says nothing: its binding from the caller, else what its name
        says (a parameter, a local assigned from an unknown call, a free module name)."""
        if name in self.bound:
            return self.bound[name]
        if name == "self" and self.cls is not None and name in self.params:
            return self.self_obj()
        local = name in self.params or name in self.local_values or name in self.tuple_values
        values = self.local_values.get(name, ())
        if values and all(is_data(v) for v in values):
            return None  # ``optimizer_grouped_parameters = [...]`` holds data, not an optimizer
        if self.parent is not None and not local and name not in self.loop_targets:
            return self.parent.resolve_name(name)
        if name in self.ctx.classes or name in self.ctx.functions:
            return None
        if not local and name in self.ctx.imports.aliases:
            return None  # ``import torch.optim as optim`` is a module, not an optimizer
        annotation = self.params.get(name)
        annotated = self.ctx.resolve_class(annotation) if annotation else None
        if annotated is not None:
            # ``executor: Executor``: an instance of a linted class, handed in
            found = instance_of(annotated)
            key = self.kept_as(name) or f"{self.scope}:{name}"
            return Obj(found.role, key, cls=annotated)
        role = role_from_name(name, annotation)
        if role is None:
            if local and used_as_engine(self.ctx, self.func, name):
                return Obj(Role.ENGINE, f"{self.scope}:{name}")
            return None
        if (
            role is Role.OPTIMIZER
            and self.params.get(name) is None
            and read_as_settings(self.ctx, self.func, name)
        ):
            return None  # ``opt.src_pad_idx``: an options namespace called ``opt``
        key = (self.kept_as(name) if name in self.params else None) or f"{self.scope}:{name}"
        if role is Role.SCHEDULER:
            return Obj(role, key, optimizer_beside(self, name), class_unpacked(self, name))
        if role is Role.OPTIMIZER:
            return Obj(role, key, built_by_class_handed_in(self, name))
        return Obj(role, key)

    def kept_as(self, name: str) -> str | None:
        """``self.<attr>``'s key when this method stores its parameter ``name`` there
        (``self.generator = generator``): the module the instance keeps, known by that
        attribute in the other methods."""
        cls = self.cls
        if cls is None or self.func is None:
            return None
        for attr, values in cls.attr_values.items():
            for value, method in values:
                if method is self.func and type(value) is cst.Name and value.value == name:
                    return f"{cls.name}.{attr}"
        return None

    def self_obj(self) -> Obj:
        assert self.cls is not None
        return instance_of(self.cls)

    def is_module_name(self, expr: cst.BaseExpression) -> bool:
        """``torch``, ``optim``, ``nn.utils``: a chain that starts at an imported module."""
        head = dotted(expr)
        if head is None:
            return False
        first = head.split(".")[0]
        frame: Frame | None = self
        while frame is not None:
            if first in frame.local_values or first in frame.params or first in frame.bound:
                return False
            frame = frame.parent
        return first in self.ctx.imports.aliases

    def resolve(self, expr: cst.BaseExpression) -> Obj | None:
        """The role of an expression used as a receiver or an argument."""
        if type(expr) is cst.Name:
            return self.resolve_name(expr.value)
        if type(expr) is cst.Attribute:
            return self._attribute_chain(expr)
        if type(expr) is cst.Subscript:
            return self.element_role(expr.value, expr)
        if type(expr) is cst.Call:
            return self.value_role(expr, None)
        return None

    def _attribute_chain(self, expr: cst.Attribute) -> Obj | None:
        attr = expr.attr.value
        owner = self.resolve(expr.value)
        if owner is not None and owner.cls is not None:
            found = self.attribute(owner.cls, attr)
            if found is not None:
                return per_instance(owner, found, attr)
        if owner is not None and owner.role is Role.ENGINE and attr == "module":
            return Obj(Role.MODEL, owner.key + ".module")
        if owner is not None and owner.role is Role.MODEL and attr == "module":
            return owner
        if owner is not None and owner.role in (Role.OPTIMIZER, Role.SCHEDULER, Role.SCALER):
            return None  # ``optimizer.param_groups``, ``scheduler.optimizer``: not followed
        # ``self.policy.optimizer``, ``trainer.optimizer``: an optimizer held by another object
        role = role_from_name(attr)
        if role not in _CHAIN_ROLES or self.is_module_name(expr.value):
            return None
        base = dotted(expr.value)
        if owner is None and (base is None or _SETTINGS.search(base)):
            return None
        if owner is not None and _SETTINGS.search(owner.key.rsplit(":", 1)[-1]):
            return None
        key = f"{owner.key}.{attr}" if owner is not None else f"{self.scope}:{base}.{attr}"
        return Obj(role, key)  # type: ignore[arg-type]

    def attribute(self, cls: ClassInfo, attr: str) -> Obj | None:
        """What ``self.<attr>`` holds in an instance of ``cls`` (assignments along its MRO)."""
        cache = _attribute_cache(cls.ctx)
        key = (id(cls), attr)
        if key in cache:
            return cache[key]
        cache[key] = None  # guard against self-reference while resolving
        found = None
        for owner, value, method in cls.attribute_values(attr):
            scope = f"{owner.name}.{method.name.value}" if method is not None else owner.name
            frame = Frame(owner.ctx, method, cls, {}, module_frame(owner.ctx), scope)
            role_obj = frame.value_role(value, None)
            if role_obj is not None:
                found = replace(role_obj, key=f"{cls.name}.{attr}")
                break
        if found is None and cls.method(attr) is None:  # ``self.net_u(x)``: a method
            role = role_from_name(attr)
            values = [v for _, v, _ in cls.attribute_values(attr)]
            if role is not None and not (values and all(is_data(v) for v in values)):
                found = Obj(role, f"{cls.name}.{attr}")
        cache[key] = found
        return found

    # values

    def value_role(self, value: cst.BaseExpression, name: str | None) -> Obj | None:
        """The role of what ``value`` evaluates to; ``name`` is the variable it is stored in."""
        memo = (id(value), name)
        if memo in self._values:
            return self._values[memo]
        self._values[memo] = None  # a value defined from itself says nothing
        found = self._value_role(value, name)
        self._values[memo] = found
        return found

    def _value_role(self, value: cst.BaseExpression, name: str | None) -> Obj | None:
        key = f"{self.scope}:{name}" if name else f"{self.scope}:@{id(value)}"
        if type(value) in (cst.Name, cst.Attribute):
            found = self.resolve(value)
            if found is None and not self.is_local_chain(value):
                return self._factory(value)
            return found
        if type(value) is cst.Subscript:
            return self.resolve(value) or self._factory_picked(value)
        if type(value) in (cst.List, cst.Tuple, cst.Set, cst.Dict):
            return self._container(value, key)
        if type(value) in (cst.ListComp, cst.DictComp, cst.GeneratorExp):
            inner = value.value if type(value) is cst.DictComp else value.elt
            element = self.value_role(inner, None) if type(inner) is cst.Call else None
            if element is not None and element.role is Role.OPTIMIZER:
                return Obj(Role.OPTIMIZER, key, element.models)
            return None
        if type(value) is cst.IfExp:
            return self.value_role(value.body, name) or self.value_role(value.orelse, name)
        if type(value) is not cst.Call:
            return None
        return self._call_role(value, key)

    def is_local_chain(self, expr: cst.BaseExpression) -> bool:
        head = dotted(expr)
        return head is not None and not self.is_module_name(expr)

    def _factory(self, value: cst.BaseExpression) -> Obj | None:
        """``torch.optim.AdamW`` or ``bnb.optim.AdamW8bit`` named, not called: a class."""
        qual = self.ctx.imports.qualify(value)
        if qual is None or "." not in qual and qual not in self.ctx.imports.aliases:
            return None
        role = constructed_role(qual)
        if role in (Role.OPTIMIZER, Role.SCHEDULER):
            return Obj(Role.FACTORY, f"{self.scope}:{qual}", builds=role)
        return None

    def _attribute_by_name(self, positional: list[cst.BaseExpression]) -> Obj | None:
        """``getattr(self, "optimizer")`` is ``self.optimizer``; ``getattr(self,
        f"optim{index}")`` one of the instance's attributes of that prefix, whose role the
        prefix says (imagen's one optimizer per U-Net)."""
        if len(positional) < 2 or type(positional[0]) not in (cst.Name, cst.Attribute):
            return None
        owner, attr = positional[0], positional[1]
        if type(attr) is cst.SimpleString:
            name = attr.evaluated_value
            if isinstance(name, str) and name.isidentifier():
                return self.resolve(cst.Attribute(value=owner, attr=cst.Name(name)))
            return None
        if type(attr) is not cst.FormattedString or not attr.parts:
            return None
        head = attr.parts[0]
        if type(head) is not cst.FormattedStringText or not head.value.isidentifier():
            return None
        if type(owner) is not cst.Name or owner.value != "self" or self.cls is None:
            return None
        role = role_from_name(head.value)
        if role is None:
            return None
        return Obj(role, f"{self.cls.name}.{head.value}*")

    def _factory_picked(self, value: cst.Subscript) -> Obj | None:
        """``{'adam': FusedAdam, 'lamb': FusedLAMB}[args.optimizer]``: one of a literal
        table of optimizer (or scheduler) classes, picked by a setting: a factory."""
        table = value.value
        if type(table) is cst.Dict:
            items = [e.value for e in table.elements if type(e) is cst.DictElement]
        elif type(table) in (cst.List, cst.Tuple):
            items = [e.value for e in table.elements]  # type: ignore[attr-defined]
        else:
            return None
        found = [self._factory(v) if type(v) in (cst.Name, cst.Attribute) else None for v in items]
        builds = {f.builds for f in found if f is not None}
        if not found or None in found or len(builds) != 1:
            return None
        return Obj(Role.FACTORY, f"{self.scope}:@{id(value)}", builds=builds.pop())

    def _container(self, value: cst.BaseExpression, key: str) -> Obj | None:
        """A literal list, tuple or dict of optimizers: one container whose members are known."""
        if type(value) is cst.Dict:
            items = [e.value for e in value.elements if type(e) is cst.DictElement]
        else:
            items = [e.value for e in value.elements]  # type: ignore[union-attr]
        if not items:
            return None
        members = [self.resolve(v) if type(v) in (cst.Name, cst.Attribute) else None for v in items]
        if all(m is not None and m.role is Role.OPTIMIZER for m in members):
            models = frozenset().union(*(m.models for m in members if m is not None))
            keys = tuple(
                dict.fromkeys(k for m in members if m is not None for k in (m.members or (m.key,)))
            )
            return Obj(Role.OPTIMIZER, key, models, members=keys)
        return None

    def element_role(
        self, container: cst.BaseExpression, subscript: cst.Subscript | None = None
    ) -> Obj | None:
        """An element of a container: ``opts[0]``, ``for opt in opts``, ``opts.values()``."""
        base = container
        if (
            type(base) is cst.Call
            and type(base.func) is cst.Attribute
            and base.func.attr.value in _CONTAINER_METHODS
        ):
            base = base.func.value
        if type(base) is cst.Call and dotted(base.func) in {"enumerate", "zip", "list"}:
            return None
        obj = self.resolve(base) if type(base) in (cst.Name, cst.Attribute) else None
        if obj is None or obj.role is not Role.OPTIMIZER:
            return None
        if subscript is not None and obj.members:
            index = literal_index(subscript)
            values = self._container_literal(base)
            if index is not None and values is not None and index in values:
                element = self.resolve(values[index])
                if element is not None:
                    return element
        return obj

    def _container_literal(
        self, expr: cst.BaseExpression
    ) -> dict[object, cst.BaseExpression] | None:
        if type(expr) is not cst.Name:
            return None
        for value in self.local_values.get(expr.value, ()):
            if type(value) in (cst.List, cst.Tuple):
                return {i: e.value for i, e in enumerate(value.elements)}
            if type(value) is cst.Dict:
                out: dict[object, cst.BaseExpression] = {}
                for e in value.elements:
                    if type(e) is cst.DictElement and type(e.key) is cst.SimpleString:
                        out[e.key.evaluated_value] = e.value
                return out
        return None

    def _call_role(self, value: cst.Call, key: str) -> Obj | None:
        func = value.func
        positional, keywords = call_args(value)
        qual = self.ctx.imports.qualify(func) if type(func) in (cst.Name, cst.Attribute) else None
        if type(func) is cst.Attribute:
            owner = self.resolve(func.value)
            method = func.attr.value
            if owner is not None:
                found = self._method_result(owner, method, positional)
                if found is not False:
                    return found  # type: ignore[return-value]
        if qual is not None and qual.rsplit(".", 1)[-1] == "getattr" and positional:
            # ``getattr(torch.optim, name)``: an optimizer class chosen by name
            module = self.ctx.imports.qualify(positional[0]) or ""
            if module.startswith(_OPTIMIZER_MODULE_PREFIXES):
                return Obj(Role.FACTORY, key, builds=Role.OPTIMIZER)
            return self._attribute_by_name(positional)
        if qual is not None and qual.rsplit(".", 1)[-1] in _PASS_THROUGH and positional:
            # ``optimizer = none_throws(self.optimizer)``: the object itself, checked
            last = positional[-1]
            return self.resolve(last) if type(last) in (cst.Name, cst.Attribute) else None
        if qual is not None and qual.rsplit(".", 1)[-1] == "partial" and positional:
            inner = self.value_role(positional[0], None)
            if inner is not None and inner.role is Role.FACTORY:
                return inner
            return None
        if type(func) in (cst.Name, cst.Attribute):
            callee = self.resolve(func) if self.is_local_chain(func) else None
            if callee is not None and callee.role is Role.FACTORY:
                return self._built(callee.builds, key, value)
        if qual is not None:
            last = qual.rsplit(".", 1)[-1]
            cls = self._class_named(func, qual)
            if cls is not None:
                if cls.is_optimizer:
                    return Obj(Role.OPTIMIZER, key, models_in(self, value))
                if cls.is_module:
                    return Obj(Role.MODEL, key, cls=cls)
                # an optimizer wrapper handed an optimizer: the models it updates
                return Obj(Role.INSTANCE, key, handed_models(self, value), cls=cls)
            first = positional[0] if positional else None
            if type(first) is cst.Name and (
                first.value in self.local_defs or first.value in self.ctx.functions
            ):
                return None  # ``torch.compile(update)``, ``CudaGraphModule(step_fn)``: a function
            if is_model_wrapper(qual) and positional:
                inner = self.resolve(positional[0])
                if inner is not None and inner.role is Role.MODEL:
                    return inner
                return Obj(Role.MODEL, key)
            if DATA_CALLS.match(last):
                return None
            role = constructed_role(qual)
            if role is not None:
                return self._built(role, key, value)
        return None

    def _method_result(self, owner: Obj, method: str, positional: list) -> Obj | None | bool:
        """The role of ``owner.method(...)``; False when the method says nothing."""
        if owner.role in (Role.MODEL, Role.ENGINE) and is_model_method(method):
            return owner
        if owner.role is Role.LIGHTNING and method == "optimizers":
            models = configured_models(self, owner, None)
            return Obj(Role.OPTIMIZER, f"{owner.key}.optimizers", models)
        if owner.role is Role.LIGHTNING and method == "lr_schedulers":
            return Obj(Role.SCHEDULER, f"{owner.key}.lr_schedulers")
        if owner.role is Role.ACCELERATOR and method in {
            "prepare",
            "setup",
            "prepare_model",
            "setup_module",
            "prepare_optimizer",
            "setup_optimizers",
            "prepare_scheduler",
        }:
            if len(positional) == 1 or method not in {"prepare", "setup"}:
                return self.resolve(positional[0]) if positional else None
            return None
        if owner.role is Role.OPTIMIZER and method in _CONTAINER_METHODS:
            return owner
        return False

    def _built(self, role: Role | None, key: str, call: cst.Call) -> Obj | None:
        if role is Role.OPTIMIZER:
            return Obj(role, key, models_in(self, call))
        if role is Role.SCHEDULER:
            return Obj(role, key, self._optimizers_in(call))
        return Obj(role, key) if role is not None else None

    def _class_named(self, func: cst.BaseExpression, qual: str) -> ClassInfo | None:
        """The class a constructor call names: of this file, or imported from a linted one."""
        if qual in self.ctx.classes:
            return self.ctx.classes[qual]
        head = (dotted(func) or "").split(".")[0]
        if head in self.ctx.imports.aliases:
            return self.ctx.resolve_class(qual)
        return None

    def tuple_role(self, value: cst.BaseExpression, index: int, name: str) -> Obj | None:
        """The role of element ``index`` of a tuple-unpacked value."""
        key = f"{self.scope}:{name}"
        if type(value) in (cst.Tuple, cst.List):
            if index < len(value.elements):
                return self.value_role(value.elements[index].value, name)
            return None
        if type(value) is not cst.Call:
            return None
        func = value.func
        positional, keywords = call_args(value)
        if type(func) is cst.Attribute:
            owner = self.resolve(func.value)
            method = func.attr.value
            if (
                owner is not None
                and owner.role is Role.ACCELERATOR
                and method
                in {
                    "prepare",
                    "setup",
                }
            ):
                return self.resolve(positional[index]) if index < len(positional) else None
            if owner is not None and owner.role is Role.LIGHTNING and method == "optimizers":
                models = configured_models(self, owner, index)
                return Obj(Role.OPTIMIZER, f"{owner.key}.optimizers[{index}]", models)
        qual = self.ctx.imports.qualify(func) if type(func) in (cst.Name, cst.Attribute) else None
        if qual is not None and builds_engine(qual):
            roles = {0: Role.ENGINE, 1: Role.OPTIMIZER, 3: Role.SCHEDULER}
            role = roles.get(index)
            return Obj(role, key) if role is not None else None
        return None

    def _optimizers_in(self, call: cst.Call) -> frozenset[str]:
        keys: set[str] = set()
        for arg in call.args:
            obj = self.resolve(arg.value)
            if obj is not None and obj.role is Role.OPTIMIZER:
                keys.update(obj.members or (obj.key,))
        return frozenset(keys)

    def optimizers(self) -> list[Obj]:
        """Every optimizer-like object visible here: locals, parameters, globals, attributes."""
        if self._optimizers is None:
            self._optimizers = self._find_optimizers()
        return self._optimizers

    def _find_optimizers(self) -> list[Obj]:
        found: dict[str, Obj] = {}
        names = set(self.local_values) | set(self.tuple_values) | set(self.params) | set(self.bound)
        for name in names:
            obj = self.resolve_name(name)
            if obj is not None and obj.role in (Role.OPTIMIZER, Role.ENGINE) and not obj.members:
                found.setdefault(obj.key, obj)
        if self.cls is not None:
            for info in self.cls.mro():
                for attr in info.attr_values:
                    obj = self.attribute(self.cls, attr)
                    me = self.bound.get("self")
                    if obj is not None and me is not None and me.cls is not None:
                        obj = per_instance(me, obj, attr)
                    if obj is not None and obj.role in (Role.OPTIMIZER, Role.ENGINE):
                        if not obj.members:
                            found.setdefault(obj.key, obj)
        if self.func is not None:
            # optimizers held by other objects, seen where they are cleared or stepped here
            # (``self.critic.optimizer.step()``)
            for receiver in stepped_receivers(self.ctx, self.func):
                obj = self.resolve(receiver)
                if obj is not None and obj.role is Role.OPTIMIZER and not obj.members:
                    found.setdefault(obj.key, obj)
        if self.parent is not None:
            for obj in self.parent.optimizers():
                found.setdefault(obj.key, obj)
        return list(found.values())


def module_frame(ctx: FileContext) -> Frame:
    """The frame of a file's module body (one per file)."""
    frame = ctx.module_frame
    if not isinstance(frame, Frame):
        frame = Frame(ctx, None, None, {}, None, f"<module:{ctx.path}>")
        ctx.module_frame = frame
    return frame


def _attribute_cache(ctx: FileContext) -> dict[tuple[int, str], Obj | None]:
    cache = getattr(ctx, "_attribute_cache", None)
    if cache is None:
        cache = {}
        ctx._attribute_cache = cache  # type: ignore[attr-defined]
    return cache


def instance_of(cls: ClassInfo) -> Obj:
    """An instance of a linted class, as its methods see ``self``."""
    role = Role.LIGHTNING if cls.is_lightning else (Role.MODEL if cls.is_module else Role.INSTANCE)
    return Obj(role, f"{cls.name}.self", cls=cls)


class FrameStack:
    """The frames being run, innermost last: what the parts of the interpreter share."""

    frames: list[Frame]

    @property
    def frame(self) -> Frame:
        return self.frames[-1]

    @property
    def ctx(self) -> FileContext:
        return self.frames[-1].ctx
