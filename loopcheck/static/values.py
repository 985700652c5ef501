"""What a value evaluates to inside a frame: the role of a call's result (a constructor, a
factory, a wrapper handing back what it wraps), of a literal container of optimizers, of one
of its elements, and of a tuple element (the value half of a ``Frame``)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import libcst as cst

from loopcheck.static.classes import ClassInfo
from loopcheck.static.ownership import configured_models, handed_models, models_in
from loopcheck.static.roles import (
    Obj,
    Role,
    builds_engine,
    constructed_role,
    is_model_method,
    is_model_wrapper,
    role_from_name,
)
from loopcheck.static.syntax import DATA_CALLS, call_args, dotted, literal_index

if TYPE_CHECKING:
    from loopcheck.static.index import FileContext

# functions that hand back the object they check (``none_throws(x)``, ``cast(T, x)``)
_PASS_THROUGH = {"none_throws", "not_none", "assert_not_none", "cast", "unwrap_optional"}
# the methods of a container that hand out its elements (``opts.values()``)
CONTAINER_METHODS = {"values", "items", "__iter__", "get", "pop"}
_OPTIMIZER_MODULE_PREFIXES = (
    "torch.optim",
    "bitsandbytes.optim",
    "bnb.optim",
    "apex.optimizers",
    "torch_optimizer",
    "timm.optim",
    "transformers.optimization",
)


# calls that spread training over devices and hand back what they were given, wrapped
_DISTRIBUTES = re.compile(r"(?i)(^|[._])(distribute|parallelize|shard)\w*$")


class ValueRoles:
    """The value half of a frame: what an expression evaluates to, given what names mean
    (``resolve``, provided by :class:`~loopcheck.static.frames.Frame`)."""

    ctx: FileContext
    cls: ClassInfo | None
    scope: str
    local_values: dict[str, list[cst.BaseExpression]]
    item_values: dict[str, list[tuple[object, cst.BaseExpression]]]
    local_defs: dict[str, cst.FunctionDef]
    _values: dict[tuple[int, str | None], Obj | None]

    def resolve(self, expr: cst.BaseExpression) -> Obj | None:
        raise NotImplementedError

    def is_module_name(self, expr: cst.BaseExpression) -> bool:
        raise NotImplementedError

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
        if type(value) is cst.Dict and (
            any(type(e) is cst.DictElement and type(e.value) is cst.Call for e in value.elements)
            or (not value.elements and name and self.item_values.get(name))
        ):
            return self._named_parts(value, key, name)
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

    def _named_parts(self, value: cst.Dict, key: str, name: str | None) -> Obj | None:
        """``{"actor": Adam(actor.parameters()), "critic": Adam(...)}``, and what the function
        stores under more constant keys: a dict of optimizers, each known by its name."""
        pairs: list[tuple[object, cst.BaseExpression]] = [
            (e.key.evaluated_value if type(e.key) is cst.SimpleString else None, e.value)
            for e in value.elements
            if type(e) is cst.DictElement
        ]
        if len(pairs) != len(value.elements):
            return None  # ``**others``
        pairs.extend(self.item_values.get(name, ()) if name else ())
        parts: dict[str, frozenset[str]] = {}
        for label, stored in pairs:
            obj = self.value_role(stored, None)
            if obj is None or obj.role is not Role.OPTIMIZER or obj.members:
                return None
            if not isinstance(label, str):
                return Obj(Role.OPTIMIZER, key, obj.models)  # keys the linter cannot read
            parts.setdefault(label, obj.models)
        models = frozenset().union(*parts.values())
        return Obj(Role.OPTIMIZER, key, models, parts=tuple(parts.items()))

    def element_role(
        self, container: cst.BaseExpression, subscript: cst.Subscript | None = None
    ) -> Obj | None:
        """An element of a container: ``opts[0]``, ``for opt in opts``, ``opts.values()``."""
        base = container
        if (
            type(base) is cst.Call
            and type(base.func) is cst.Attribute
            and base.func.attr.value in CONTAINER_METHODS
        ):
            base = base.func.value
        if type(base) is cst.Call and dotted(base.func) in {"enumerate", "zip", "list"}:
            return None
        obj = self.resolve(base) if type(base) in (cst.Name, cst.Attribute) else None
        if obj is None or obj.role is not Role.OPTIMIZER:
            return None
        if subscript is not None and obj.parts:
            return obj.part(literal_index(subscript)) or obj
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
                if cls.is_scheduler:
                    return Obj(Role.SCHEDULER, key, self._optimizers_in(value), cls=cls)
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
        if owner.role is Role.OPTIMIZER and method in CONTAINER_METHODS:
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
        return self._handed_back(value, name)

    def _handed_back(self, call: cst.Call, name: str) -> Obj | None:
        """``model, opt, dl, sched = backend.distribute(model=m, optimizer=o, ...)``: a name
        that says optimizer (or scheduler), unpacked from a call named for spreading the
        training over devices and handed exactly one of them, is that one, wrapped (DALLE's
        distributed backends)."""
        role = role_from_name(name)
        if role not in (Role.OPTIMIZER, Role.SCHEDULER):
            return None
        if not _DISTRIBUTES.search(dotted(call.func) or ""):
            return None  # (opacus' ``make_private`` hands back an optimizer that rescales)
        handed = [self.resolve(arg.value) for arg in call.args]
        found = [obj for obj in handed if obj is not None and obj.role is role]
        return found[0] if len(found) == 1 else None

    def _optimizers_in(self, call: cst.Call) -> frozenset[str]:
        keys: set[str] = set()
        for arg in call.args:
            obj = self.resolve(arg.value)
            if obj is not None and obj.role is Role.OPTIMIZER:
                keys.update(obj.members or (obj.key,))
        return frozenset(keys)
