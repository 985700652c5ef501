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
    optimizer_beside,
    per_instance,
)
from loopcheck.static.roles import (
    Obj,
    Role,
    role_from_name,
)
from loopcheck.static.syntax import (
    dotted,
    is_data,
)
from loopcheck.static.usage import read_as_settings, stepped_receivers, used_as_engine
from loopcheck.static.values import ValueRoles

_MODEL_ROLES = (Role.MODEL, Role.LIGHTNING, Role.ENGINE)
# Roles an attribute chain may announce by its last name (``self.policy.optimizer``).
_CHAIN_ROLES = (Role.OPTIMIZER, Role.SCHEDULER, Role.SCALER)
# Objects that hold settings: ``args.optimizer`` is a string, ``cfg.optim`` a section.
_SETTINGS = re.compile(
    r"(?i)^(args|arguments|opts?|options|flags|cfg|config|conf|configs|hparams|hps?|params"
    r"|settings|hyperparams|kwargs|self\.(args|cfg|config|conf|hparams|opts?|options))$"
    r"|_(args|cfg|config|conf|hparams|opts|options|settings)$"
)


class Frame(ValueRoles):
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
        self.item_values = info.item_values
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

    def rebinds(self, name: str) -> bool:
        """Whether the function assigns ``name`` itself: plainly, by unpacking, or as a loop
        variable."""
        return name in self.local_values or name in self.tuple_values or name in self.loop_targets

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
                if found.parts:
                    found = _with_stored_parts(found, cls, attr)
                break
        if found is None and any(
            type(v) is cst.Dict and not v.elements for _, v, _ in cls.attribute_values(attr)
        ):
            # ``self.optimizers = {}``, filled by ``self.optimizers["G"] = Adam(...)``
            filled = _with_stored_parts(Obj(Role.OPTIMIZER, f"{cls.name}.{attr}"), cls, attr)
            found = filled if filled.parts else None
        if found is None and cls.method(attr) is None:  # ``self.net_u(x)``: a method
            role = role_from_name(attr)
            values = [v for _, v, _ in cls.attribute_values(attr)]
            if role is not None and not (values and all(is_data(v) for v in values)):
                found = Obj(role, f"{cls.name}.{attr}")
        cache[key] = found
        return found

    # values

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
            for part in obj.all_parts() if obj is not None else ():
                found.setdefault(part.key, part)
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
                        for part in obj.all_parts():
                            found.setdefault(part.key, part)
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


def _with_stored_parts(found: Obj, cls: ClassInfo, attr: str) -> Obj:
    """A dict of named optimizers that methods add to (``self.optimizers["critic"] =
    Adam(...)``): those are parts too; one stored under a key that is no constant, or that is
    no optimizer, leaves one container whose members are unknown."""
    parts = dict(found.parts)
    for label, value, method in (i for info in cls.mro() for i in info.item_values.get(attr, ())):
        scope = f"{cls.name}.{method.name.value}"
        frame = Frame(cls.ctx, method, cls, {}, module_frame(cls.ctx), scope)
        stored = frame.value_role(value, None)
        if not isinstance(label, str) or stored is None or stored.role is not Role.OPTIMIZER:
            return Obj(found.role, found.key, found.models)
        parts.setdefault(label, stored.models)
    models = found.models.union(*parts.values())
    return replace(found, models=models, parts=tuple(parts.items()))


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
