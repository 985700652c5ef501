"""What a called expression names: the functions and methods of the linted files it runs (the
overrides in subclasses, a method bound to an attribute, a method called on an object of
unknown class, a function imported from another linted file), a function of another library
that an attribute holds, or an optimizer of ``higher`` that never touches ``.grad``."""

from __future__ import annotations

import libcst as cst

from loopcheck.static.apis import CLIP_FUNCTIONS
from loopcheck.static.callees import does_nothing
from loopcheck.static.classes import ClassInfo
from loopcheck.static.frames import Frame, instance_of
from loopcheck.static.host import HostView
from loopcheck.static.index import FileContext
from loopcheck.static.roles import Obj, Role
from loopcheck.static.syntax import all_params, called_name, is_abstract, local_functions

# The functions or methods a call runs, each with its file, class and bound ``self``.
Callees = list[tuple[FileContext, cst.FunctionDef, ClassInfo | None, Obj | None]]


class Targets(HostView):
    """Resolves what calls name, in the host's current frame."""

    def callee(self, func: cst.BaseExpression) -> Callees | None:
        """The functions or methods of linted files that ``func`` names (the overrides of a
        method in the subclasses of ``self``'s class too); None when it names none."""
        frame = self.frame
        ctx = self.ctx
        if type(func) is cst.Name:
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
            found = _enclosing_defs(frame, name)
            if found:
                return [(ctx, node, None, None) for node in found]
            if name in ctx.functions:
                return [(ctx, ctx.functions[name], None, None)]
            if name in ctx.imports.aliases:
                return self._external(ctx.imports.aliases[name])
            return None
        if type(func) is cst.Attribute:
            owner = frame.resolve(func.value)
            if owner is not None and owner.cls is not None:
                return self._method(owner, func.attr.value)
            if owner is not None and owner.role in (Role.MODEL, Role.LIGHTNING, Role.INSTANCE):
                return self._duck_method(func.attr.value)
            if owner is None and frame.is_module_name(func.value):
                qual = ctx.imports.qualify(func)
                if qual is not None:
                    return self._external(qual)
            if owner is None and type(func.value) is cst.Name and func.value.value in frame.params:
                return self._duck_method(func.attr.value)
            if owner is None and _kept_parameter(frame, func.value):
                # ``self.executor.forward_backward(x, y)`` on the object ``__init__`` kept
                return self._duck_method(func.attr.value)
        return None

    def _duck_method(self, name: str) -> Callees | None:
        """A method called on an object of unknown class: the one class of this file that
        defines it and trains in it (an RL agent handed to a runner loop)."""
        found = self.ctx.sole_method(name)
        if found is None or is_abstract(found[1]):
            return None
        info, node = found
        return [(self.ctx, node, info, instance_of(info))]

    def _method(self, owner: Obj, name: str) -> Callees | None:
        cls = owner.cls
        assert cls is not None
        found = cls.method(name)
        if found is None:
            aliased = [self._method(owner, alias) for alias in cls.method_aliases(name)]
            if aliased and all(aliased):
                return [target for targets in aliased if targets for target in targets]
            return None
        info, node = found
        if is_abstract(node) and not does_nothing(info, node):
            return None  # overridden elsewhere: a call we cannot see into
        return [(info.ctx, node, cls, owner)]

    def _external(self, qual: str) -> Callees | None:
        found = self.ctx.external(qual)
        if found is None:
            return None
        other, definition = found
        if type(definition) is cst.FunctionDef:
            return [(other, definition, None, None)]
        return None

    def differentiable(self, receiver: cst.BaseExpression) -> bool:
        """A name given by higher's ``innerloop_ctx(...)`` or ``get_diff_optim(...)``."""
        if type(receiver) is not cst.Name:
            return False
        values = self.frame.local_values.get(receiver.value) or []
        return bool(values) and all(
            type(v) is cst.Call and called_name(v) in _DIFF_OPTIMS for v in values
        )

    def held_function(self, owner: Obj, attr: str) -> str | None:
        """The function of another library that ``self.<attr>`` holds, when every value
        assigned to it is that function, or every one a clip: ``self.clip_func = torch.nn
        .utils.clip_grad_norm_`` (mmengine's optimizer wrapper)."""
        if owner.cls is None or owner.cls.method(attr) is not None:
            return None
        found: set[str] = set()
        for info, value, _ in owner.cls.attribute_values(attr):
            qual = (
                info.ctx.imports.qualify(value)
                if type(value) in (cst.Name, cst.Attribute)
                else None
            )
            if qual is None or info.ctx.external(qual) is not None:
                return None
            found.add(qual)
        if found and all(q.rsplit(".", 1)[-1] in CLIP_FUNCTIONS for q in found):
            return min(found)  # a clip by norm or by value, as configured
        return found.pop() if len(found) == 1 else None


_DIFF_OPTIMS = {"innerloop_ctx", "get_diff_optim", "DifferentiableOptimizer"}


def _enclosing_defs(frame: Frame, name: str) -> list[cst.FunctionDef]:
    """The functions defined beside the running one in the function enclosing it that a
    name calls: by their own name, or through a name that function binds to them on each
    of its branches (ignite's ``training_step`` calling ``backward_pass``, set to
    ``amp_backward_pass`` or to ``hvd_amp_backward_pass``)."""
    outer = frame.parent
    while outer is not None and outer.func is not None:
        if name in outer.local_defs or name in outer.local_values:
            return local_functions(name, outer.local_defs, outer.local_values)
        if name in outer.params:
            return []
        outer = outer.parent
    return []


def _kept_parameter(frame: Frame, expr: cst.BaseExpression) -> bool:
    """``self.executor`` where every method storing it stores a parameter it was handed
    (``self.executor = executor``): an object of a type this code does not name."""
    cls = frame.cls
    if (
        cls is None
        or type(expr) is not cst.Attribute
        or type(expr.value) is not cst.Name
        or expr.value.value != "self"
    ):
        return False
    stored = [
        (value, method)
        for info in cls.mro()
        for value, method in info.attr_values.get(expr.attr.value, ())
    ]
    return bool(stored) and all(
        type(value) is cst.Name and value.value in {p.name.value for p in all_params(method)}
        for value, method in stored
    )
