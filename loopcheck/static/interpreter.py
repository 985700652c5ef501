"""The static observer's engine: runs each entry point of a file abstractly, as sets of protocol
states, one per path, and records what the protocol says about every path.

Statements are interpreted structurally: ``if`` runs both branches (unless the same condition
was already decided on this path), loops iterate to a fixed point with their back edge,
``break``/``continue``/``return`` leave through their own exits, ``try`` handlers start from any
point of the body. Calls to functions and methods defined in the file are followed with their
arguments bound; calls that cannot be seen into and receive an optimizer make its state unknown.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import libcst as cst
from libcst.metadata import CodeRange, MetadataWrapper, PositionProvider

from loopcheck.diagnostic import Span
from loopcheck.protocol import UNKNOWN, Event, Move, OptState, advance
from loopcheck.static.model import FileModel, LoopSummary, Record, RootSummary, Site
from loopcheck.static.roles import (
    Imports,
    Obj,
    Role,
    constructed_role,
    dotted_name,
    is_model_method,
    is_model_wrapper,
    role_from_name,
)
from loopcheck.static.tree import kids

MAX_STATES = 96
MAX_FOLLOW_DEPTH = 6
MAX_LOOP_ROUNDS = 6
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
_CLEARING_NAMES = ("zero_grad", "reset_grad", "clear_grad", "zero_grads", "clear_grads")


# --- path states --------------------------------------------------------------------------


@dataclass(frozen=True)
class PathState:
    """The protocol state of every optimizer on one path, plus the branch facts decided on it."""

    opts: tuple[tuple[str, OptState], ...] = ()
    facts: frozenset[tuple[str, bool]] = frozenset()
    last_zeroed: str | None = None  # the optimizer most recently cleared on this path

    def get(self, key: str) -> OptState:
        for k, s in self.opts:
            if k == key:
                return s
        return UNKNOWN

    def with_opt(self, key: str, state: OptState) -> PathState:
        opts = tuple((k, s) for k, s in self.opts if k != key) + ((key, state),)
        return replace(self, opts=tuple(sorted(opts, key=lambda item: item[0])))


States = frozenset[PathState]


@dataclass
class Flow:
    """Where the paths of a block went."""

    normal: set[PathState] = field(default_factory=set)
    breaks: set[PathState] = field(default_factory=set)
    continues: set[PathState] = field(default_factory=set)
    returns: set[PathState] = field(default_factory=set)


# --- the file's definitions -----------------------------------------------------------------


@dataclass(eq=False)
class ClassInfo:
    name: str
    node: cst.ClassDef
    bases: list[str]
    methods: dict[str, cst.FunctionDef]
    attr_values: dict[str, list[tuple[cst.BaseExpression, cst.FunctionDef]]]

    @property
    def is_module(self) -> bool:
        return any(
            b.rsplit(".", 1)[-1] in {"Module", "LightningModule", "PreTrainedModel"}
            for b in self.bases
        )

    @property
    def is_lightning(self) -> bool:
        return any(b.rsplit(".", 1)[-1] == "LightningModule" for b in self.bases)

    @property
    def is_optimizer(self) -> bool:
        return any(b.rsplit(".", 1)[-1] == "Optimizer" for b in self.bases)


class FileContext:
    """Definitions, imports and positions of one file, computed once."""

    def __init__(self, module: cst.Module) -> None:
        self.module = module
        self._positions: Mapping[cst.CSTNode, CodeRange] | None = None
        self._functions_info: dict[int, FunctionInfo] = {}
        self._loop_assigned: dict[int, set[str]] = {}
        self._target_names: dict[int, set[str]] = {}
        self._evaluation: dict[int, list[cst.CSTNode]] = {}
        self.imports = Imports(module)
        self.functions: dict[str, cst.FunctionDef] = {}
        self.classes: dict[str, ClassInfo] = {}
        self.referenced: set[str] = set()
        self.tracked_conditions: set[str] = set()
        self.relevant: set[int] = set()  # ids of the functions that may take part in a step
        self.tracked_moduli: set[str] = set()  # counter%modulus pairs guarding two branches
        self.fact_names: dict[str, set[str]] = {}
        _Indexer(self).index(module)

    def function_info(self, func: cst.FunctionDef | None) -> FunctionInfo:
        key = id(func)
        info = self._functions_info.get(key)
        if info is None:
            info = self._functions_info[key] = _function_info(self, func)
        return info

    def target_names(self, stmt: cst.CSTNode, targets: list[cst.BaseExpression]) -> set[str]:
        key = id(stmt)
        names = self._target_names.get(key)
        if names is None:
            names = set().union(*(_names_in(t) for t in targets)) if targets else set()
            self._target_names[key] = names
        return names

    def loop_assigned(self, stmt: cst.For | cst.While) -> set[str]:
        key = id(stmt)
        names = self._loop_assigned.get(key)
        if names is None:
            names = self._loop_assigned[key] = _loop_assigned(stmt)
        return names

    def evaluation_order(self, expr: cst.CSTNode) -> list[cst.CSTNode]:
        key = id(expr)
        nodes = self._evaluation.get(key)
        if nodes is None:
            nodes = self._evaluation[key] = _evaluation_order(expr)
        return nodes

    def span(self, node: cst.CSTNode) -> Span:
        if self._positions is None:
            # Positions need a full code generation pass: only files with findings pay it.
            wrapper = MetadataWrapper(self.module, unsafe_skip_copy=True)
            self._positions = wrapper.resolve(PositionProvider)
        rng = self._positions[node]
        return Span(rng.start.line, rng.start.column + 1, rng.end.line, rng.end.column + 1)

    def site(self, node: cst.CSTNode) -> Site:
        return Site(node, self.span, self.module.code_for_node)

    def code(self, node: cst.CSTNode) -> str:
        return self.module.code_for_node(node).strip()

    def methods_of(self, cls: str | None, name: str) -> cst.FunctionDef | None:
        seen: set[str] = set()
        while cls is not None and cls in self.classes and cls not in seen:
            seen.add(cls)
            info = self.classes[cls]
            if name in info.methods:
                return info.methods[name]
            cls = next((b for b in info.bases if b in self.classes), None)
        return None


# Method names that real code calls on models and optimizers all the time: ``model.train()``
# does not mean that a trainer's own ``train`` method is called from this file.
_MODULE_API = {
    "train",
    "eval",
    "step",
    "forward",
    "zero_grad",
    "backward",
    "update",
    "to",
    "cuda",
    "parameters",
    "state_dict",
    "load_state_dict",
}


# Words without which a function cannot take part in a training step.
_MOVE_WORDS = {
    "backward",
    "step",
    "zero_grad",
    "grad",
    "clip_grad_norm_",
    "clip_grad_value_",
    "clip_grad_norm",
    "clip_grads_with_norm_",
    "clip_gradients",
    "unscale_",
    "manual_backward",
    "first_step",
    "second_step",
    *_CLEARING_NAMES,
}


class _Indexer:
    """One pass over the file: definitions, references, repeated branch conditions."""

    def __init__(self, ctx: FileContext) -> None:
        self.ctx = ctx
        self.condition_counts: dict[str, int] = {}
        self.moduli_counts: dict[str, int] = {}

    def index(self, module: cst.Module) -> None:
        for stmt in module.body:
            if isinstance(stmt, cst.FunctionDef):
                self.ctx.functions.setdefault(stmt.name.value, stmt)
            elif isinstance(stmt, cst.ClassDef):
                self._class(stmt)
        # One walk: references, repeated conditions, and per function (the innermost one
        # around each node) whether it mentions a move and which names it calls.
        mentions: dict[int, bool] = {}
        calls: dict[int, set[str]] = {}
        enclosing: dict[int, int | None] = {}
        by_name: dict[str, list[int]] = {}
        stack: list[tuple[cst.CSTNode, int | None]] = [(module, None)]
        while stack:
            node, owner = stack.pop()
            kind = type(node)
            if kind is cst.Name:
                self.ctx.referenced.add(node.value)
                if owner is not None and node.value in _MOVE_WORDS:
                    mentions[owner] = True
                continue
            if kind is cst.Attribute:
                attr = node.attr.value
                value = node.value
                on_self = type(value) is cst.Name and value.value == "self"
                if on_self or attr not in _MODULE_API:
                    self.ctx.referenced.add(attr)
                if owner is not None and attr in _MOVE_WORDS:
                    mentions[owner] = True
                stack.append((value, owner))
                continue
            if kind is cst.FunctionDef:
                key = id(node)
                mentions.setdefault(key, False)
                calls.setdefault(key, set())
                enclosing[key] = owner
                by_name.setdefault(node.name.value, []).append(key)
                stack.extend((c, key) for c in kids(node) if c is not node.name)
                continue
            if kind is cst.ClassDef:
                stack.extend((c, owner) for c in kids(node) if c is not node.name)
                continue
            if kind is cst.Call and owner is not None:
                func = node.func
                if type(func) is cst.Name:
                    calls[owner].add(func.value)
                elif type(func) is cst.Attribute:
                    calls[owner].add(func.attr.value)
            elif kind is cst.If or kind is cst.While:
                modular = _modular(self.ctx, node.test)
                if modular is not None:
                    modulus = modular[0].rpartition("%")[0]
                    self.moduli_counts[modulus] = self.moduli_counts.get(modulus, 0) + 1
                text = condition_key(self.ctx, node.test)[0]
                if text is not None:
                    self.condition_counts[text] = self.condition_counts.get(text, 0) + 1
                    if self.condition_counts[text] == 2:
                        self.ctx.fact_names[text] = _names_in(node.test)
            stack.extend((c, owner) for c in kids(node))
        self.ctx.tracked_conditions = {t for t, n in self.condition_counts.items() if n > 1}
        self.ctx.tracked_moduli = {m for m, n in self.moduli_counts.items() if n > 1}
        self.ctx.relevant = _relevant(mentions, calls, enclosing, by_name)

    def _class(self, node: cst.ClassDef) -> None:
        bases = [self.ctx.imports.qualify(a.value) or "" for a in node.bases]
        methods = {s.name.value: s for s in node.body.body if isinstance(s, cst.FunctionDef)}
        attrs: dict[str, list[tuple[cst.BaseExpression, cst.FunctionDef]]] = {}
        for method in methods.values():
            for target, value in _assignments(method.body):
                if (
                    isinstance(target, cst.Attribute)
                    and isinstance(target.value, cst.Name)
                    and target.value.value == "self"
                ):
                    attrs.setdefault(target.attr.value, []).append((value, method))
        self.ctx.classes[node.name.value] = ClassInfo(node.name.value, node, bases, methods, attrs)


def _relevant(
    mentions: dict[int, bool],
    calls: dict[int, set[str]],
    enclosing: dict[int, int | None],
    by_name: dict[str, list[int]],
) -> set[int]:
    """Functions that can take part in a training step: those that mention a move (directly
    or in a nested function), and those that call, by name, a function that can."""
    relevant = {key for key, yes in mentions.items() if yes}
    for key in list(relevant):
        parent = enclosing.get(key)
        while parent is not None:
            relevant.add(parent)
            parent = enclosing.get(parent)
    changed = True
    while changed:
        changed = False
        names = {name for name, keys in by_name.items() if any(k in relevant for k in keys)}
        for key, called in calls.items():
            if key not in relevant and called & names:
                relevant.add(key)
                changed = True
    return relevant


def condition_key(ctx: FileContext, test: cst.BaseExpression) -> tuple[str | None, bool]:
    """A branch condition as a fact: its text without a leading ``not``, and its polarity.
    ``None`` for conditions that may change between two evaluations (they call something)."""
    polarity = True
    while isinstance(test, cst.UnaryOperation) and isinstance(test.operator, cst.Not):
        test, polarity = test.expression, not polarity
    if _contains(test, cst.Call):
        return None, polarity
    return ctx.code(test), polarity


def _contains(node: cst.CSTNode, kind: type) -> bool:
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, kind):
            return True
        stack.extend(kids(n))
    return False


def _names_in(node: cst.CSTNode) -> set[str]:
    out: set[str] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, cst.Name):
            out.add(n.value)
        stack.extend(kids(n))
    return out


def _assignments(
    body: cst.CSTNode,
) -> Iterable[tuple[cst.BaseExpression, cst.BaseExpression]]:
    """(target, value) pairs of the plain assignments in a body, nested defs excluded; tuple
    targets are split when the value is a tuple of the same length."""
    stack: list[cst.CSTNode] = [body]
    while stack:
        node = stack.pop()
        if isinstance(node, (cst.FunctionDef, cst.ClassDef, cst.Lambda)):
            continue
        if isinstance(node, cst.Assign):
            for t in node.targets:
                yield t.target, node.value
        elif isinstance(node, cst.AnnAssign) and node.value is not None:
            yield node.target, node.value
        elif isinstance(node, cst.BaseExpression):
            continue
        stack.extend(kids(node))


def _call_args(call: cst.Call) -> tuple[list[cst.BaseExpression], dict[str, cst.BaseExpression]]:
    positional: list[cst.BaseExpression] = []
    keywords: dict[str, cst.BaseExpression] = {}
    for arg in call.args:
        if arg.keyword is not None:
            keywords[arg.keyword.value] = arg.value
        elif not arg.star:
            positional.append(arg.value)
    return positional, keywords


# --- frames: what names mean inside one function ---------------------------------------------


@dataclass
class FunctionInfo:
    """What one function's text says, independent of any call context (computed once)."""

    local_values: dict[str, list[cst.BaseExpression]]
    tuple_values: dict[str, list[tuple[int, cst.BaseExpression]]]
    local_defs: dict[str, cst.FunctionDef]
    params: dict[str, str | None]


def _function_info(ctx: FileContext, func: cst.FunctionDef | None) -> FunctionInfo:
    body = func.body if func is not None else ctx.module
    info = FunctionInfo({}, {}, {}, {})
    for target, value in _assignments(body):
        if isinstance(target, cst.Name):
            info.local_values.setdefault(target.value, []).append(value)
        elif isinstance(target, (cst.Tuple, cst.List)):
            for i, el in enumerate(target.elements):
                if isinstance(el.value, cst.Name):
                    info.tuple_values.setdefault(el.value.value, []).append((i, value))
    if func is not None:
        for node in _nested_defs(func.body):
            info.local_defs.setdefault(node.name.value, node)
        params = func.params
        for p in [*params.posonly_params, *params.params, *params.kwonly_params]:
            ann = None
            if p.annotation is not None:
                ann = ctx.imports.qualify(p.annotation.annotation)
            info.params[p.name.value] = ann
    return info


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
        self.parent = parent  # the module frame, for globals
        self.scope = scope
        info = ctx.function_info(func)
        self.local_values = info.local_values
        self.tuple_values = info.tuple_values
        self.local_defs = info.local_defs
        self.params = info.params
        self._cache: dict[str, Obj | None] = {}
        self._busy: set[str] = set()
        self.constants: dict[str, object] = {}  # parameters known to hold a literal value

    # names

    def resolve_name(self, name: str) -> Obj | None:
        if name in self._cache:
            return self._cache[name]
        if name in self._busy:
            return self._fallback(name)
        self._busy.add(name)
        try:
            found = None
            for value in self.local_values.get(name, ()):
                found = self.value_role(value, name)
                if found is not None:
                    break
            if found is None:
                for index, value in self.tuple_values.get(name, ()):
                    found = self.tuple_role(value, index, name)
                    if found is not None:
                        break
            if found is None:
                found = self._fallback(name)
        finally:
            self._busy.discard(name)
        self._cache[name] = found
        return found

    def _fallback(self, name: str) -> Obj | None:
        """A name whose value says nothing: its binding from the caller, else what its name
        says (a parameter, a local assigned from an unknown call, a free module name)."""
        if name in self.bound:
            return self.bound[name]
        if name == "self" and self.cls is not None and name in self.params:
            return self.self_obj()
        local = name in self.params or name in self.local_values or name in self.tuple_values
        if name in self.local_values and all(
            isinstance(v, _DATA_NODES) for v in self.local_values[name]
        ):
            return None  # ``optimizer_grouped_parameters = [...]`` holds data, not an optimizer
        if self.parent is not None and not local:
            return self.parent.resolve_name(name)
        if name in self.ctx.classes or name in self.ctx.functions:
            return None
        if not local and name in self.ctx.imports.aliases:
            return None  # ``import torch.optim as optim`` is a module, not an optimizer
        role = role_from_name(name, self.params.get(name))
        return Obj(role, f"{self.scope}:{name}") if role is not None else None

    def self_obj(self) -> Obj:
        assert self.cls is not None
        role = (
            Role.LIGHTNING
            if self.cls.is_lightning
            else (Role.MODEL if self.cls.is_module else Role.INSTANCE)
        )
        return Obj(role, f"{self.cls.name}.self", cls=self.cls.name)

    def resolve(self, expr: cst.BaseExpression) -> Obj | None:
        """The role of an expression used as a receiver or an argument."""
        if isinstance(expr, cst.Name):
            return self.resolve_name(expr.value)
        if isinstance(expr, cst.Attribute):
            owner = self.resolve(expr.value)
            if owner is not None and owner.cls is not None:
                return self.attribute(owner.cls, expr.attr.value)
            if owner is not None and owner.role is Role.ENGINE and expr.attr.value == "module":
                return Obj(Role.MODEL, owner.key + ".module")
            if owner is not None and owner.role is Role.MODEL and expr.attr.value == "module":
                return owner
            return None
        if isinstance(expr, cst.Call):
            return self.value_role(expr, None)
        return None

    def attribute(self, cls: str, attr: str) -> Obj | None:
        info = self.ctx.classes.get(cls)
        if info is None:
            return None
        key = f"{cls}.{attr}"
        cache = _ATTR_CACHE.setdefault(id(self.ctx), {})
        if key in cache:
            return cache[key]
        cache[key] = None  # guard against self-reference while resolving
        found = None
        for value, method in info.attr_values.get(attr, ()):
            frame = Frame(
                self.ctx, method, info, {}, self.module_frame(), f"{cls}.{method.name.value}"
            )
            role_obj = frame.value_role(value, None)
            if role_obj is not None:
                found = replace(role_obj, key=key)
                break
        if found is None:
            role = role_from_name(attr)
            if role is not None:
                found = Obj(role, key)
        cache[key] = found
        return found

    def module_frame(self) -> Frame:
        frame = self
        while frame.parent is not None:
            frame = frame.parent
        return frame

    # values

    def value_role(self, value: cst.BaseExpression, name: str | None) -> Obj | None:
        """The role of what ``value`` evaluates to; ``name`` is the variable it is stored in."""
        key = f"{self.scope}:{name}" if name else f"{self.scope}:@{id(value)}"
        if isinstance(value, (cst.Name, cst.Attribute)):
            return self.resolve(value)
        if not isinstance(value, cst.Call):
            return None
        func = value.func
        positional, keywords = _call_args(value)
        qual = (
            self.ctx.imports.qualify(func) if isinstance(func, (cst.Name, cst.Attribute)) else None
        )
        if isinstance(func, cst.Attribute):
            owner = self.resolve(func.value)
            method = func.attr.value
            if owner is not None:
                if owner.role in (Role.MODEL, Role.ENGINE) and is_model_method(method):
                    return owner
                if owner.role is Role.LIGHTNING and method == "optimizers":
                    return Obj(Role.OPTIMIZER, f"{owner.key}.optimizers")
                if owner.role is Role.LIGHTNING and method == "lr_schedulers":
                    return Obj(Role.SCHEDULER, f"{owner.key}.lr_schedulers")
                if owner.role is Role.ACCELERATOR and method in {"prepare", "setup"}:
                    if len(positional) == 1:
                        return self.resolve(positional[0])
                    return None
                if owner.role is Role.ACCELERATOR and method in {
                    "prepare_model",
                    "setup_module",
                }:
                    return self.resolve(positional[0]) if positional else None
                if owner.role is Role.ACCELERATOR and method in {
                    "prepare_optimizer",
                    "setup_optimizers",
                }:
                    return self.resolve(positional[0]) if positional else None
        if qual is not None:
            last = qual.rsplit(".", 1)[-1]
            if last in self.ctx.classes and qual == last:
                info = self.ctx.classes[last]
                if info.is_optimizer:
                    return Obj(Role.OPTIMIZER, key, self._models_in(value))
                role = Role.MODEL if info.is_module else Role.INSTANCE
                return Obj(role, key, cls=last)
            if is_model_wrapper(qual) and positional:
                inner = self.resolve(positional[0])
                if inner is not None and inner.role is Role.MODEL:
                    return inner
                return Obj(Role.MODEL, key)
            role = constructed_role(qual)
            if role is Role.OPTIMIZER:
                return Obj(role, key, self._models_in(value))
            if role is Role.SCHEDULER:
                return Obj(role, key, self._optimizers_in(value))
            if role is not None:
                return Obj(role, key)
        return None

    def tuple_role(self, value: cst.BaseExpression, index: int, name: str) -> Obj | None:
        """The role of element ``index`` of a tuple-unpacked value."""
        key = f"{self.scope}:{name}"
        if isinstance(value, (cst.Tuple, cst.List)):
            if index < len(value.elements):
                return self.value_role(value.elements[index].value, name)
            return None
        if not isinstance(value, cst.Call):
            return None
        func = value.func
        positional, keywords = _call_args(value)
        if isinstance(func, cst.Attribute):
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
                return Obj(Role.OPTIMIZER, f"{owner.key}.optimizers[{index}]")
        qual = (
            self.ctx.imports.qualify(func) if isinstance(func, (cst.Name, cst.Attribute)) else None
        )
        if qual is not None and qual.endswith("initialize") and "deepspeed" in qual:
            roles = {0: Role.ENGINE, 1: Role.OPTIMIZER, 3: Role.SCHEDULER}
            role = roles.get(index)
            return Obj(role, key) if role is not None else None
        return None

    def _models_in(self, call: cst.Call) -> frozenset[str]:
        """Keys of the models whose parameters an optimizer constructor receives."""
        keys: set[str] = set()
        for arg in call.args:
            for node in _roots_of(arg.value):
                obj = self.resolve(node)
                if obj is not None and obj.role in (Role.MODEL, Role.LIGHTNING, Role.ENGINE):
                    keys.add(obj.key)
        return frozenset(keys)

    def _optimizers_in(self, call: cst.Call) -> frozenset[str]:
        keys: set[str] = set()
        for arg in call.args:
            obj = self.resolve(arg.value)
            if obj is not None and obj.role is Role.OPTIMIZER:
                keys.add(obj.key)
        return frozenset(keys)

    def optimizers(self) -> list[Obj]:
        """Every optimizer-like object visible here: locals, parameters, globals, attributes."""
        found: dict[str, Obj] = {}
        names = set(self.local_values) | set(self.tuple_values) | set(self.params) | set(self.bound)
        for name in names:
            obj = self.resolve_name(name)
            if obj is not None and obj.role in (Role.OPTIMIZER, Role.ENGINE):
                found.setdefault(obj.key, obj)
        if self.cls is not None:
            for attr in self.cls.attr_values:
                obj = self.attribute(self.cls.name, attr)
                if obj is not None and obj.role in (Role.OPTIMIZER, Role.ENGINE):
                    found.setdefault(obj.key, obj)
        if self.parent is not None:
            for obj in self.parent.optimizers():
                found.setdefault(obj.key, obj)
        return list(found.values())


_ATTR_CACHE: dict[int, dict[str, Obj | None]] = {}

# Values that are plain data, whatever the variable they are stored in is called.
_DATA_NODES = (
    cst.List,
    cst.Dict,
    cst.Tuple,
    cst.Set,
    cst.ListComp,
    cst.DictComp,
    cst.SetComp,
    cst.GeneratorExp,
    cst.SimpleString,
    cst.ConcatenatedString,
    cst.FormattedString,
    cst.Integer,
    cst.Float,
    cst.BinaryOperation,
    cst.Comparison,
)


def _nested_defs(body: cst.CSTNode) -> Iterable[cst.FunctionDef]:
    stack: list[cst.CSTNode] = list(kids(body))
    while stack:
        node = stack.pop()
        if isinstance(node, cst.FunctionDef):
            yield node
            continue
        if isinstance(node, (cst.ClassDef, cst.BaseExpression)):
            continue
        stack.extend(kids(node))


def _roots_of(expr: cst.CSTNode) -> Iterable[cst.BaseExpression]:
    """The receivers at the bottom of attribute and call chains inside an expression:
    ``model.encoder.parameters()`` gives ``model``; ``self.model.parameters()`` gives
    ``self.model``."""
    stack = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, cst.Attribute):
            if isinstance(node.value, cst.Name) and node.value.value == "self":
                yield node
                continue
            stack.append(node.value)
            continue
        if isinstance(node, cst.Name):
            yield node
            continue
        if isinstance(node, cst.Call):
            stack.append(node.func)
            stack.extend(a.value for a in node.args)
            continue
        stack.extend(kids(node))


# --- actions: what one call or statement does ------------------------------------------------


@dataclass(frozen=True)
class Emit:
    """Send an event to some optimizers (``keys``); ``None`` means every known optimizer."""

    event: Event
    keys: tuple[str, ...] | None
    only_if_single: bool = False  # with keys None: only when one optimizer is known


@dataclass(frozen=True)
class Backward:
    """A backward call: definite or maybe per optimizer, decided per path."""

    site: Site
    scaled: bool
    divided: bool | None


@dataclass(frozen=True)
class Follow:
    """Interpret a function or lambda defined in this file, with arguments bound."""

    node: cst.FunctionDef | cst.Lambda
    bound: tuple[tuple[str, Obj | None], ...]
    cls: ClassInfo | None
    constants: tuple[tuple[str, object], ...] = ()  # parameters bound to literal values


@dataclass(frozen=True)
class Mark:
    """Note something about the enclosing loops (no protocol effect)."""

    what: str


Action = Emit | Backward | Follow | Mark


# --- the interpreter -------------------------------------------------------------------------


class Interpreter:
    def __init__(self, ctx: FileContext, model: FileModel) -> None:
        self.ctx = ctx
        self.model = model
        self.loop_stack: list[LoopSummary] = []
        self.follow_stack: list[cst.CSTNode] = []
        self.frames: list[Frame] = []
        self.root: RootSummary | None = None
        self.summaries: dict[int, LoopSummary] = {}
        self.follows = 0  # calls followed in this root's analysis
        self.discarding = 0  # inside a block that drops the batch (except, ``...; continue``)

    @property
    def frame(self) -> Frame:
        return self.frames[-1]

    # entry points

    def run_root(self, frame: Frame, body: Sequence[cst.BaseStatement], root: RootSummary) -> None:
        self.frames = [frame]
        self.root = root
        self.loop_stack = []
        self.follow_stack = [frame.func] if frame.func is not None else []
        self.follows = 0
        self.exec_block(body, {PathState()})

    # blocks

    def exec_block(self, body: Sequence[cst.CSTNode], states: set[PathState]) -> Flow:
        if body and _ends_with_continue(body[-1]):
            # ``zero_grad(); continue`` drops the batch on purpose: no step was meant to follow.
            self.discarding += 1
            try:
                return self._exec_block(body, states)
            finally:
                self.discarding -= 1
        return self._exec_block(body, states)

    def _exec_block(self, body: Sequence[cst.CSTNode], states: set[PathState]) -> Flow:
        flow = Flow(normal=set(states))
        for stmt in body:
            if not flow.normal:
                break
            inner = self.exec_stmt(stmt, flow.normal)
            flow.normal = _cap(inner.normal)
            flow.breaks |= inner.breaks
            flow.continues |= inner.continues
            flow.returns |= inner.returns
        return flow

    def exec_stmt(self, stmt: cst.CSTNode, states: set[PathState]) -> Flow:
        if isinstance(stmt, cst.SimpleStatementLine):
            return self.exec_block(stmt.body, states)
        if isinstance(stmt, cst.IndentedBlock):
            return self.exec_block(stmt.body, states)
        if isinstance(stmt, cst.If):
            return self.exec_if(stmt, states)
        if isinstance(stmt, (cst.For, cst.While)):
            return self.exec_loop(stmt, states)
        if isinstance(stmt, cst.With):
            for item in stmt.items:
                states = self.run_actions(self.actions_of_expr(item.item), states)
            return self.exec_stmt(stmt.body, states)
        if isinstance(stmt, (cst.Try, cst.TryStar)):
            return self.exec_try(stmt, states)
        if isinstance(stmt, cst.Match):
            flow = Flow()
            for case in stmt.cases:
                flow = _merge(flow, self.exec_stmt(case.body, states))
            flow.normal |= (
                states
                if not any(
                    isinstance(c.pattern, cst.MatchAs) and c.pattern.pattern is None
                    for c in stmt.cases
                )
                else set()
            )
            return flow
        if isinstance(stmt, (cst.FunctionDef, cst.ClassDef)):
            return Flow(normal=states)
        if isinstance(stmt, cst.Break):
            return Flow(breaks=states)
        if isinstance(stmt, cst.Continue):
            return Flow(continues=states)
        if isinstance(stmt, cst.Return):
            if stmt.value is not None:
                states = self.run_actions(self.actions_of_expr(stmt.value), states)
            return Flow(returns=states)
        if isinstance(stmt, cst.Raise):
            return Flow()
        if isinstance(stmt, cst.Expr):
            return Flow(normal=self.run_actions(self.actions_of_expr(stmt.value), states))
        if isinstance(stmt, (cst.Assign, cst.AnnAssign, cst.AugAssign)):
            return Flow(normal=self.exec_assign(stmt, states))
        return Flow(normal=states)

    def exec_if(self, stmt: cst.If, states: set[PathState]) -> Flow:
        states = self.run_actions(self.actions_of_expr(stmt.test), states)
        decided = _truth(stmt.test, self.frame.constants)
        if decided is not None:
            branch: cst.CSTNode | None = stmt.body
            if not decided:
                branch = stmt.orelse.body if isinstance(stmt.orelse, cst.Else) else stmt.orelse
            return self.exec_stmt(branch, states) if branch is not None else Flow(normal=states)
        modular = _modular(self.ctx, stmt.test)
        if modular is not None and modular[0].rpartition("%")[0] not in self.ctx.tracked_moduli:
            modular = None
        if modular is not None:
            text, polarity, names = modular
            self.ctx.fact_names.setdefault(text, names)
            tracked = True
        else:
            text, polarity = condition_key(self.ctx, stmt.test)
            tracked = text is not None and text in self.ctx.tracked_conditions
        taken: set[PathState] = set()
        skipped: set[PathState] = set()
        for s in states:
            known = _fact(s, text) if tracked else None
            if known is None and modular is not None:
                known = _residue_excludes(s, text)
                if known is not None:
                    s = replace(s, facts=s.facts | {(text, known)})
            if known is None:
                if tracked:
                    taken.add(replace(s, facts=s.facts | {(text, polarity)}))
                    skipped.add(replace(s, facts=s.facts | {(text, not polarity)}))
                else:
                    taken.add(s)
                    skipped.add(s)
            elif known == polarity:
                taken.add(s)
            else:
                skipped.add(s)
        flow = self.exec_stmt(stmt.body, taken) if taken else Flow()
        if stmt.orelse is None:
            flow.normal |= skipped
            return flow
        other = stmt.orelse.body if isinstance(stmt.orelse, cst.Else) else stmt.orelse
        return _merge(flow, self.exec_stmt(other, skipped) if skipped else Flow())

    def exec_try(self, stmt: cst.Try | cst.TryStar, states: set[PathState]) -> Flow:
        body = self.exec_stmt(stmt.body, states)
        # A handler may start anywhere in the body: before it, or after it ran through.
        handler_entry = set(states) | body.normal
        flow = Flow(breaks=body.breaks, continues=body.continues, returns=body.returns)
        if stmt.orelse is not None:
            flow = _merge(flow, self.exec_stmt(stmt.orelse.body, body.normal))
        else:
            flow.normal = set(body.normal)
        self.discarding += 1  # a clear in a handler drops the failed batch on purpose
        try:
            for handler in stmt.handlers:
                flow = _merge(flow, self.exec_stmt(handler.body, handler_entry))
        finally:
            self.discarding -= 1
        if stmt.finalbody is None:
            return flow
        out = Flow()
        for exits, name in (
            (flow.normal, "normal"),
            (flow.breaks, "breaks"),
            (flow.continues, "continues"),
            (flow.returns, "returns"),
        ):
            if exits:
                after = self.exec_stmt(stmt.finalbody.body, exits)
                getattr(out, name).update(after.normal)
                out.returns |= after.returns
        return out

    def exec_loop(self, stmt: cst.For | cst.While, states: set[PathState]) -> Flow:
        summary = self.summaries.get(id(stmt))
        if summary is None:
            summary = LoopSummary(
                stmt, self.ctx.site(stmt), self.loop_stack[-1] if self.loop_stack else None
            )
            self.summaries[id(stmt)] = summary
            self.model.loops.append(summary)
        clears = self.clears_all_grads(stmt) if isinstance(stmt, cst.For) else None
        if clears is not None:
            return Flow(normal=self.run_actions(clears, states))
        head = stmt.iter if isinstance(stmt, cst.For) else stmt.test
        states = self.run_actions(self.actions_of_expr(head), states)
        assigned = _names_in(stmt.target) if isinstance(stmt, cst.For) else set()
        # Counters that grow by one per iteration keep their modular facts across the back
        # edge, shifted: ``(i + 1) % N != 0`` now is ``i % N != 0`` next iteration.
        counter = _counter_of(stmt)
        counters = _incremented(stmt.body) | ({counter} if counter else set())
        self.loop_stack.append(summary)
        try:
            entry = {_forget_facts(self.enter(s), assigned, self.ctx.fact_names) for s in states}
            seen = set(entry)
            after_body: set[PathState] = set()  # loops are assumed to run at least once
            breaks: set[PathState] = set()
            returns: set[PathState] = set()
            for _ in range(MAX_LOOP_ROUNDS):
                flow = self.exec_stmt(stmt.body, entry)
                breaks |= flow.breaks
                returns |= flow.returns
                back = {
                    _forget_facts(
                        self.shift(self.iterate(s, summary), counter),
                        assigned | self.ctx.loop_assigned(stmt),
                        self.ctx.fact_names,
                        keep=counters,
                    )
                    for s in flow.normal | flow.continues
                }
                after_body |= back
                new = back - seen
                if not new:
                    break
                seen |= new
                entry = _cap(new)
        finally:
            self.loop_stack.pop()
        infinite = isinstance(stmt, cst.While) and _is_true(stmt.test)
        exit_states = set() if infinite else after_body
        if stmt.orelse is not None and exit_states:
            exit_states = self.exec_stmt(stmt.orelse.body, exit_states).normal
        return Flow(normal=_cap(exit_states | breaks), returns=returns)

    def enter(self, state: PathState) -> PathState:
        """A loop starts: tell every optimizer's protocol state."""
        for key, opt_state in state.opts:
            new, _ = advance(opt_state, Event(Move.LOOP_ENTRY))
            if new is not opt_state:
                state = state.with_opt(key, new)
        return state

    def shift(self, state: PathState, counter: str | None) -> PathState:
        """The counter grew by one: move its modular facts one step."""
        if counter is None or not state.facts:
            return state
        prefix = f"%{counter}%"
        facts = set()
        for text, value in state.facts:
            if text.startswith(prefix):
                head, _, offset = text.rpartition("%")
                if int(offset) < -3:
                    continue  # too old to matter
                shifted = f"{head}%{int(offset) - 1}"
                self.ctx.fact_names.setdefault(shifted, self.ctx.fact_names.get(text, set()))
                facts.add((shifted, value))
            else:
                facts.add((text, value))
        return replace(state, facts=frozenset(facts))

    def iterate(self, state: PathState, summary: LoopSummary) -> PathState:
        """The back edge: a new iteration for the optimizers this loop steps. Which optimizer
        was cleared last says nothing about the next iteration's backward."""
        state = replace(state, last_zeroed=None)
        for key, opt_state in state.opts:
            if summary.has(Move.STEP, key):
                new, _ = advance(opt_state, Event(Move.ITERATION))
                state = state.with_opt(key, new)
        return state

    def exec_assign(self, stmt: cst.CSTNode, states: set[PathState]) -> set[PathState]:
        actions: list[Action] = []
        value = getattr(stmt, "value", None)
        if value is not None:
            actions.extend(self.actions_of_expr(value))
        targets: list[cst.BaseExpression] = []
        if isinstance(stmt, cst.Assign):
            targets = [t.target for t in stmt.targets]
        elif isinstance(stmt, (cst.AnnAssign, cst.AugAssign)):
            targets = [stmt.target]
        for target in targets:
            actions.extend(self.actions_of_target(target, value, stmt))
        states = self.run_actions(actions, states)
        names = self.ctx.target_names(stmt, targets)
        if isinstance(value, cst.Call) and any(_LOSS_NAME.match(n) for n in names):
            self.mark("loss")
        if isinstance(stmt, cst.AugAssign) and _is_increment(stmt):
            counter = stmt.target.value  # type: ignore[union-attr]
            states = {self.shift(s, counter) for s in states}
            return {_forget_facts(s, names, self.ctx.fact_names, keep={counter}) for s in states}
        return {_forget_facts(s, names, self.ctx.fact_names) for s in states}

    def actions_of_target(
        self, target: cst.BaseExpression, value: cst.BaseExpression | None, stmt: cst.CSTNode
    ) -> list[Action]:
        """Stores into ``.grad``: clearing one tensor's gradient, or rewriting it by hand."""
        if isinstance(target, cst.Attribute) and target.attr.value == "grad":
            if isinstance(value, cst.Name) and value.value == "None":
                return [Mark("clears"), Emit(Event(Move.GRAD_ACCESS), None)]
            return [Mark("grads"), Emit(Event(Move.OPAQUE), None)]
        if isinstance(target, cst.Attribute) and target.attr.value == "data":
            return [Mark("grads")]
        if isinstance(target, cst.Subscript) or isinstance(target, (cst.Tuple, cst.List)):
            out: list[Action] = []
            for node in kids(target):
                if isinstance(node, cst.BaseExpression):
                    out.extend(self.actions_of_expr(node))
            return out
        return []

    # loops that clear every gradient by hand

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
        if not _body_clears(stmt.body, var):
            return None
        return [Mark("clears"), *self.zero_for_model(owner, self.ctx.site(stmt))]

    def zero_for_model(self, model: Obj, site: Site) -> list[Action]:
        opts = self.frame.optimizers()
        bound = [o.key for o in opts if model.key in o.models]
        if bound:
            return [Emit(self.zero_event(site), tuple(bound))]
        unbound = [o.key for o in opts if not o.models]
        if len(opts) == 1 and unbound:
            return [Emit(self.zero_event(site), tuple(unbound))]
        return [Emit(Event(Move.OPAQUE), tuple(unbound))] if unbound else []

    # running actions over states

    def run_actions(self, actions: Sequence[Action], states: set[PathState]) -> set[PathState]:
        for action in actions:
            if not states:
                break
            if isinstance(action, Emit):
                states = {self.emit(s, action) for s in states}
            elif isinstance(action, Backward):
                self.note_backward(action.site)
                states = {self.backward(s, action) for s in states}
            elif isinstance(action, Follow):
                states = self.follow(action, states)
            elif isinstance(action, Mark):
                self.mark(action.what)
        return states

    def known_keys(self) -> list[str]:
        return [o.key for o in self.frame.optimizers()]

    def emit(self, state: PathState, action: Emit) -> PathState:
        keys = action.keys
        if keys is None:
            keys = tuple(dict.fromkeys([*self.known_keys(), *(k for k, _ in state.opts)]))
            if action.only_if_single and len(keys) != 1:
                return state
        event = action.event
        for key in keys:
            state = self.apply(state, key, event)
            if event.move is Move.ZERO:
                state = replace(state, last_zeroed=key)
        return state

    def note_backward(self, site: Site) -> None:
        for summary in self.loop_stack:
            if site not in summary.backwards:
                summary.backwards.append(site)
        if self.loop_stack and self.root is not None:
            in_scope = bool(self.frame.optimizers())
            self.root.backwards_in_loops.append((site, self.loop_stack[0], in_scope))

    def backward(self, state: PathState, action: Backward) -> PathState:
        keys = self.known_keys()
        keys_in_state = [k for k, _ in state.opts]
        keys = list(dict.fromkeys([*keys, *keys_in_state]))
        definite = keys if len(keys) == 1 else [k for k in keys if k == state.last_zeroed]
        for key in keys:
            if key in definite:
                event = Event(
                    Move.BACKWARD, action.site, scaled=action.scaled, divided=action.divided
                )
            else:
                event = Event(Move.MAYBE_BACKWARD, action.site)
            state = self.apply(state, key, event)
        return state

    def apply(self, state: PathState, key: str, event: Event) -> PathState:
        new, violations = advance(state.get(key), event)
        where = event.where if isinstance(event.where, Site) else None
        for summary in self.loop_stack:
            summary.moves.add((event.move, key))
            if where is not None:
                summary.sites.add(where)
            if event.move is Move.STEP and isinstance(event.where, Site):
                summary.steps.setdefault(key, event.where)
        if event.move in (Move.STEP, Move.OPAQUE) and self.root is not None:
            self.root.stepped = True
        loop = self.loop_stack[-1] if self.loop_stack else None
        for v in violations:
            if isinstance(v.where, Site):
                cause = v.cause if isinstance(v.cause, Site) else None
                self.model.add_record(Record(v.code, v.where, key, loop, self.root, cause))
        return state.with_opt(key, new)

    def mark(self, what: str) -> None:
        if what == "stepped" and self.root is not None:
            self.root.stepped = True
            return
        for summary in self.loop_stack:
            if what == "forward":
                summary.forward = True
            elif what == "loss":
                summary.loss_assigned = True
            elif what == "clears":
                summary.clears_by_name = True
            elif what == "opaque_model":
                summary.opaque_model = True
            elif what == "grads":
                summary.grads_read = True
        if what == "grads" and self.root is not None:
            self.root.stepped = True  # gradients used by hand: a manual update is possible

    def follow(self, action: Follow, states: set[PathState]) -> set[PathState]:
        node = action.node
        if node in self.follow_stack or len(self.follow_stack) >= MAX_FOLLOW_DEPTH:
            return states
        self.follows += 1
        module_frame = self.frame.module_frame()
        if isinstance(node, cst.Lambda):
            self.follow_stack.append(node)
            try:
                return self.run_actions(self.actions_of_expr(node.body), states)
            finally:
                self.follow_stack.pop()
        nested = node in self.frame.local_defs.values()
        parent = self.frame if nested else module_frame
        name = node.name.value
        scope = f"{action.cls.name}.{name}" if action.cls is not None else name
        frame = Frame(self.ctx, node, action.cls, dict(action.bound), parent, scope)
        frame.constants = {k: v for k, v in action.constants if k not in frame.local_values}
        self.frames.append(frame)
        self.follow_stack.append(node)
        try:
            flow = self.exec_stmt(node.body, states)
        finally:
            self.follow_stack.pop()
            self.frames.pop()
        return _cap(flow.normal | flow.returns)

    # expressions → actions

    def actions_of_expr(self, expr: cst.BaseExpression) -> list[Action]:
        actions: list[Action] = []
        for node in self.ctx.evaluation_order(expr):
            if isinstance(node, cst.Call):
                actions.extend(self.actions_of_call(node))
            elif isinstance(node, cst.Attribute) and node.attr.value == "grad":
                actions.append(Mark("grads"))
                actions.append(Emit(Event(Move.GRAD_ACCESS), None))
        return actions

    def actions_of_call(self, call: cst.Call) -> list[Action]:
        func = call.func
        frame = self.frame
        positional, keywords = _call_args(call)
        if isinstance(func, cst.Attribute):
            method = func.attr.value
            owner = frame.resolve(func.value)
            if owner is not None:
                handled = self.method_call(owner, method, call, positional, keywords)
                if handled is not None:
                    return handled
            if method == "backward":
                return [self.backward_action(call, func.value)]
            if method in _CLEARING_NAMES or method == "zero_grad":
                return [Mark("clears"), *self.unresolved_clear(call)]
            if "step" in method and owner is None:
                # ``schedule.step()`` may run forward and backward; ``self.optimizers[0]
                # .step()`` may step an optimizer, unlike ``envs = make_env(); envs.step()``
                self.mark("opaque_model")
                if not self.known_other(func.value):
                    self.mark("stepped")
        callee = self.callee(func)
        if callee is not None:
            node, cls, self_obj = callee
            if id(node) not in self.ctx.relevant:
                return self.helper_without_moves(call)
            if self.follows >= MAX_FOLLOWS_PER_ROOT:
                return self.opaque_args(call)
            return [self.follow_action(node, cls, self_obj, call, positional, keywords)]
        qual = (
            frame.ctx.imports.qualify(func) if isinstance(func, (cst.Name, cst.Attribute)) else None
        )
        if qual is not None:
            last = qual.rsplit(".", 1)[-1]
            if last in _CLIP_FUNCTIONS and ("torch" in qual or qual == last):
                return self.clip_actions(call, positional[0] if positional else None)
            if qual in {"torch.autograd.backward", "autograd.backward"}:
                return [
                    Backward(
                        self.ctx.site(call), False, _divided(positional[0]) if positional else None
                    )
                ]
            if last in _CLEARING_NAMES:
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

    def method_call(
        self,
        owner: Obj,
        method: str,
        call: cst.Call,
        positional: list[cst.BaseExpression],
        keywords: dict[str, cst.BaseExpression],
    ) -> list[Action] | None:
        site = self.ctx.site(call)
        role = owner.role
        if role is Role.OPTIMIZER:
            if method == "zero_grad":
                return [Emit(self.zero_event(site), (owner.key,))]
            if method == "step":
                closure = positional[0] if positional else keywords.get("closure")
                before: list[Action] = []
                if closure is not None:
                    body = self.closure_body(closure)
                    before = (
                        [body] if body is not None else [Emit(Event(Move.OPAQUE), (owner.key,))]
                    )
                return [*before, Emit(Event(Move.STEP, site), (owner.key,))]
            if method in _OPTIMIZER_HARMLESS:
                return []
            return [Emit(Event(Move.OPAQUE), (owner.key,))]
        if role is Role.ENGINE:
            if method == "backward":
                return [Backward(site, False, True)]
            if method == "step":
                return [
                    Emit(Event(Move.STEP, site), (owner.key,)),
                    Emit(Event(Move.ZERO), (owner.key,)),
                ]
            if method == "zero_grad":
                return [Emit(Event(Move.ZERO, site), (owner.key,))]
            if method == "forward":
                return [Mark("forward")]
            return []
        if role is Role.SCHEDULER:
            if method == "step":
                keys = tuple(owner.models) or None
                return [Emit(Event(Move.SCHED_STEP, site), keys)]
            return []
        if role is Role.SCALER:
            if method == "step" and positional:
                target = self.frame.resolve(positional[0])
                if target is not None and target.role is Role.OPTIMIZER:
                    return [Emit(Event(Move.STEP, site, via_scaler=True), (target.key,))]
                return []
            if method == "unscale_" and positional:
                target = self.frame.resolve(positional[0])
                if target is not None and target.role is Role.OPTIMIZER:
                    return [Emit(Event(Move.UNSCALE, site), (target.key,))]
                return []
            if method == "update":
                return [Emit(Event(Move.SCALER_UPDATE, site), None)]
            return []
        if role is Role.ACCELERATOR:
            if method == "backward":
                return [Backward(site, False, True)]
            if method in {"clip_grad_norm_", "clip_grad_value_"}:
                return self.clip_actions(call, positional[0] if positional else None)
            if method == "clip_gradients":
                target = positional[1] if len(positional) > 1 else keywords.get("optimizer")
                return self.clip_actions(
                    call, target if target is not None else (positional[0] if positional else None)
                )
            return []
        if role is Role.LIGHTNING:
            if method == "manual_backward":
                return [Backward(site, False, True)]
            if method == "clip_gradients":
                target = positional[0] if positional else keywords.get("optimizer")
                return self.clip_actions(call, target)
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
            if owner.cls is not None and self.ctx.methods_of(owner.cls, method) is not None:
                return None  # a method defined in this file: follow it
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

    def known_other(self, receiver: cst.BaseExpression) -> bool:
        """A plain local or global name assigned from something that is not an optimizer
        (``envs = gym.vector.SyncVectorEnv(...)``): its ``step()`` steps no optimizer."""
        if not isinstance(receiver, cst.Name):
            return False
        frame = self.frame
        while frame is not None:
            if receiver.value in frame.local_values or receiver.value in frame.tuple_values:
                return True
            frame = frame.parent
        return False

    def zero_event(self, site: Site | None) -> Event:
        return Event(Move.ZERO, site, deliberate=self.discarding > 0)

    def closure_body(self, closure: cst.BaseExpression) -> Follow | None:
        if isinstance(closure, cst.Lambda):
            return Follow(closure, (), None)
        if isinstance(closure, cst.Name):
            node = self.frame.local_defs.get(closure.value) or self.ctx.functions.get(closure.value)
            if node is not None:
                return Follow(node, (), None)
        return None

    def backward_action(self, call: cst.Call, receiver: cst.BaseExpression) -> Backward:
        scaled = False
        if isinstance(receiver, cst.Call) and isinstance(receiver.func, cst.Attribute):
            owner = self.frame.resolve(receiver.func.value)
            if (
                receiver.func.attr.value == "scale"
                and owner is not None
                and owner.role is Role.SCALER
            ):
                scaled = True
        return Backward(self.ctx.site(call), scaled, _divided(receiver))

    def clip_actions(self, call: cst.Call, params: cst.BaseExpression | None) -> list[Action]:
        site = self.ctx.site(call)
        opts = self.frame.optimizers()
        keys: list[str] = []
        if params is not None:
            for root in _roots_of(params):
                obj = self.frame.resolve(root)
                if obj is None:
                    continue
                if obj.role is Role.OPTIMIZER:
                    keys.append(obj.key)
                elif obj.role in (Role.MODEL, Role.LIGHTNING, Role.ENGINE):
                    keys.extend(o.key for o in opts if obj.key in o.models)
        if keys:
            return [Emit(Event(Move.CLIP, site), tuple(dict.fromkeys(keys)))]
        return [Emit(Event(Move.CLIP, site), None, only_if_single=True)] if len(opts) <= 1 else []

    def unresolved_clear(self, call: cst.Call) -> list[Action]:
        """``something.zero_grad()`` on a receiver we could not resolve: with one optimizer in
        sight it is that optimizer's clear; otherwise no claim."""
        opts = self.known_keys()
        if len(opts) == 1:
            return [Emit(self.zero_event(self.ctx.site(call)), tuple(opts))]
        return [Emit(Event(Move.OPAQUE), tuple(opts))] if opts else []

    def callee(
        self, func: cst.BaseExpression
    ) -> tuple[cst.FunctionDef, ClassInfo | None, Obj | None] | None:
        """A function or method defined in this file that ``func`` names, if it can take part
        in a training step (the others are treated as calls we cannot see into)."""
        return self._callee(func)

    def _callee(
        self, func: cst.BaseExpression
    ) -> tuple[cst.FunctionDef, ClassInfo | None, Obj | None] | None:
        frame = self.frame
        if isinstance(func, cst.Name):
            name = func.value
            if name in frame.local_defs:
                return frame.local_defs[name], None, None
            obj = frame.resolve_name(name)
            if obj is not None and obj.cls is not None:
                method = self.ctx.methods_of(obj.cls, "__call__")
                if method is not None:
                    return method, self.ctx.classes[obj.cls], obj
                return None
            if name in self.ctx.functions and name not in frame.local_values:
                return self.ctx.functions[name], None, None
            return None
        if isinstance(func, cst.Attribute):
            owner = frame.resolve(func.value)
            if owner is not None and owner.cls is not None:
                method = self.ctx.methods_of(owner.cls, func.attr.value)
                if method is not None:
                    return method, self.ctx.classes.get(owner.cls), owner
        return None

    def follow_action(
        self,
        node: cst.FunctionDef,
        cls: ClassInfo | None,
        self_obj: Obj | None,
        call: cst.Call,
        positional: list[cst.BaseExpression],
        keywords: dict[str, cst.BaseExpression],
    ) -> Follow:
        params = [*node.params.posonly_params, *node.params.params]
        bound: dict[str, Obj | None] = {}
        if cls is not None and params and params[0].name.value in {"self", "cls"}:
            if self_obj is not None and self_obj.role is not Role.INSTANCE:
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
        return Follow(node, tuple(bound.items()), cls, constants)

    def helper_without_moves(self, call: cst.Call) -> list[Action]:
        """A function of this file that mentions no move: at most a forward pass (it may
        compute the loss), and it may pass an optimizer it receives on to anything."""
        actions: list[Action] = []
        for action in self.opaque_args(call):
            if isinstance(action, Mark):
                actions.append(Mark("forward"))
            else:
                actions.append(action)
        return actions

    def called_object(self, obj: Obj, call: cst.Call) -> list[Action]:
        if obj.role in (Role.MODEL, Role.ENGINE, Role.LIGHTNING):
            return [Mark("forward")]
        return self.opaque_args(call)

    def opaque_args(self, call: cst.Call) -> list[Action]:
        """A call we cannot see into: optimizers it receives may have been stepped or cleared;
        a model it receives may have been run backward."""
        keys: list[str] = []
        model = False
        for arg in call.args:
            obj = (
                self.frame.resolve(arg.value)
                if isinstance(arg.value, (cst.Name, cst.Attribute))
                else None
            )
            if obj is None:
                continue
            if obj.role in (Role.OPTIMIZER, Role.ENGINE):
                keys.append(obj.key)
            elif obj.role in (Role.MODEL, Role.LIGHTNING):
                model = True
        actions: list[Action] = []
        if keys:
            actions.append(Emit(Event(Move.OPAQUE), tuple(keys)))
        if model:
            actions.append(Mark("opaque_model"))
        return actions


_LOSS_NAME = re.compile(r"(?i)^(\w+_)?loss(_\w+)?$")
_LITERALS: dict[str, object] = {"True": True, "False": False, "None": None}


def _literal(expr: cst.BaseExpression | None) -> tuple[bool, object]:
    """(is a literal, its value) for True/False/None and numbers."""
    if isinstance(expr, cst.Name) and expr.value in _LITERALS:
        return True, _LITERALS[expr.value]
    if isinstance(expr, (cst.Integer, cst.Float)):
        return True, float(expr.value.replace("_", "")) if "." in expr.value else 1
    return False, None


def _constants(
    node: cst.FunctionDef,
    positional: list[cst.BaseExpression],
    keywords: dict[str, cst.BaseExpression],
    cls: ClassInfo | None,
) -> tuple[tuple[str, object], ...]:
    """The parameters of a followed call that hold literal values: literal arguments, and
    literal defaults of parameters the call does not pass."""
    params = [*node.params.posonly_params, *node.params.params]
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
        ok, value = _literal(arg)
        if ok:
            out[name] = value
    return tuple(out.items())


def _truth(test: cst.BaseExpression, constants: dict[str, object]) -> bool | None:
    """The value of a branch condition made only of parameters with literal values."""
    if not constants:
        return None
    if isinstance(test, cst.Name):
        return bool(constants[test.value]) if test.value in constants else None
    if isinstance(test, cst.UnaryOperation) and isinstance(test.operator, cst.Not):
        inner = _truth(test.expression, constants)
        return None if inner is None else not inner
    if (
        isinstance(test, cst.Comparison)
        and len(test.comparisons) == 1
        and isinstance(test.left, cst.Name)
        and test.left.value in constants
    ):
        comp = test.comparisons[0]
        is_none = isinstance(comp.comparator, cst.Name) and comp.comparator.value == "None"
        if is_none and isinstance(comp.operator, cst.Is):
            return constants[test.left.value] is None
        if is_none and isinstance(comp.operator, cst.IsNot):
            return constants[test.left.value] is not None
    if isinstance(test, cst.BooleanOperation):
        left, right = _truth(test.left, constants), _truth(test.right, constants)
        if isinstance(test.operator, cst.And):
            if left is False or right is False:
                return False
            return True if left and right else None
        if left or right:
            return True
        return False if left is False and right is False else None
    return None


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


def _harmless(qual: str) -> bool:
    """Calls that receive an optimizer or model only to look at it."""
    return qual in _HARMLESS_CALLS or qual.startswith(_HARMLESS_PREFIXES)


def _body_clears(body: cst.CSTNode, var: str) -> bool:
    """Whether a loop body sets ``var.grad`` to None or zeroes it."""
    stack = [body]
    while stack:
        node = stack.pop()
        if isinstance(node, cst.Assign):
            for t in node.targets:
                if _is_grad_of(t.target, var):
                    return True
        if isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute):
            if node.func.attr.value in {"zero_", "detach_", "requires_grad_"}:
                inner = node.func.value
                if isinstance(inner, cst.Attribute) and inner.attr.value == "data":
                    inner = inner.value
                if _is_grad_of(inner, var) and node.func.attr.value == "zero_":
                    return True
        stack.extend(kids(node))
    return False


def _modular(ctx: FileContext, test: cst.BaseExpression) -> tuple[str, bool, set[str]] | None:
    """A step guard on a counter, ``(i + k) % N == r`` (or ``!=``), as a fact about ``i``:
    its key names the counter, the modulus and the offset ``k - r``."""
    polarity = True
    while isinstance(test, cst.UnaryOperation) and isinstance(test.operator, cst.Not):
        test, polarity = test.expression, not polarity
    if not (isinstance(test, cst.Comparison) and len(test.comparisons) == 1):
        return None
    comp = test.comparisons[0]
    if not isinstance(comp.operator, (cst.Equal, cst.NotEqual)):
        return None
    if not isinstance(comp.comparator, cst.Integer):
        return None
    mod = test.left
    if not (isinstance(mod, cst.BinaryOperation) and isinstance(mod.operator, cst.Modulo)):
        return None
    counter, offset = mod.left, 0
    if (
        isinstance(counter, cst.BinaryOperation)
        and isinstance(counter.operator, cst.Add)
        and isinstance(counter.right, cst.Integer)
    ):
        counter, offset = counter.left, int(counter.right.evaluated_value)
    if not isinstance(counter, cst.Name) or _contains(mod.right, cst.Call):
        return None
    if isinstance(comp.operator, cst.NotEqual):
        polarity = not polarity
    offset -= int(comp.comparator.evaluated_value)
    key = f"%{counter.value}%{ctx.code(mod.right)}%{offset}"
    return key, polarity, {counter.value} | _names_in(mod.right)


def _counter_of(stmt: cst.For | cst.While) -> str | None:
    """The loop variable that grows by one per iteration: ``for i in range(...)``,
    ``for i, x in enumerate(...)``."""
    if not isinstance(stmt, cst.For) or not isinstance(stmt.iter, cst.Call):
        return None
    func = dotted_name(stmt.iter.func)
    target = stmt.target
    if func == "range" and isinstance(target, cst.Name):
        return target.value
    if func == "enumerate" and isinstance(target, cst.Tuple) and target.elements:
        first = target.elements[0].value
        return first.value if isinstance(first, cst.Name) else None
    return None


def _is_increment(stmt: cst.AugAssign) -> bool:
    return (
        isinstance(stmt.target, cst.Name)
        and isinstance(stmt.operator, cst.AddAssign)
        and isinstance(stmt.value, cst.Integer)
        and stmt.value.value == "1"
    )


def _incremented(body: cst.CSTNode) -> set[str]:
    """Names a loop body increments by one (``step += 1``)."""
    out: set[str] = set()
    stack = [body]
    while stack:
        node = stack.pop()
        if isinstance(node, cst.AugAssign) and _is_increment(node):
            out.add(node.target.value)  # type: ignore[union-attr]
        elif isinstance(node, (cst.FunctionDef, cst.ClassDef, cst.BaseExpression)):
            continue
        stack.extend(kids(node))
    return out


def _ends_with_continue(stmt: cst.CSTNode) -> bool:
    return isinstance(stmt, cst.SimpleStatementLine) and isinstance(stmt.body[-1], cst.Continue)


def _is_grad_of(expr: cst.BaseExpression, var: str) -> bool:
    return (
        isinstance(expr, cst.Attribute)
        and expr.attr.value == "grad"
        and isinstance(expr.value, cst.Name)
        and expr.value.value == var
    )


def _divided(loss: cst.BaseExpression) -> bool | None:
    """Whether a loss expression visibly divides (``loss / n``); None when it is just a name."""
    if isinstance(loss, cst.BinaryOperation) and isinstance(
        loss.operator, (cst.Divide, cst.Multiply)
    ):
        return True
    return None


def _evaluation_order(expr: cst.CSTNode) -> list[cst.CSTNode]:
    """Calls and ``.grad`` reads inside an expression, innermost first, left to right; lambdas
    and nested definitions are not evaluated here."""
    out: list[cst.CSTNode] = []

    def visit(node: cst.CSTNode) -> None:
        if isinstance(node, (cst.Lambda, cst.FunctionDef, cst.ClassDef)):
            return
        for child in kids(node):
            visit(child)
        if isinstance(node, cst.Call) or (
            isinstance(node, cst.Attribute) and node.attr.value == "grad"
        ):
            out.append(node)

    visit(expr)
    return out


def _is_true(test: cst.BaseExpression) -> bool:
    return (isinstance(test, cst.Name) and test.value == "True") or (
        isinstance(test, cst.Integer) and test.value != "0"
    )


def _loop_assigned(stmt: cst.For | cst.While) -> set[str]:
    """Names assigned anywhere in a loop body: their branch facts do not survive the back edge."""
    names: set[str] = set()
    for target, _ in _assignments(stmt.body):
        names |= _names_in(target)
    stack: list[cst.CSTNode] = [stmt.body]
    while stack:
        node = stack.pop()
        if isinstance(node, cst.AugAssign):
            names |= _names_in(node.target)
        elif isinstance(node, cst.For):
            names |= _names_in(node.target)
        if not isinstance(node, cst.BaseExpression):
            stack.extend(kids(node))
    return names


def _residue_excludes(state: PathState, text: str) -> bool | None:
    """False when another offset of the same counter and modulus is known to hit zero: a
    counter has one residue at a time (moduli are taken to exceed the small offsets)."""
    head, _, offset = text.rpartition("%")
    for fact_text, value in state.facts:
        if value and fact_text.startswith(head + "%") and fact_text.rpartition("%")[2] != offset:
            if fact_text.rpartition("%")[0] == head:
                return False
    return None


def _fact(state: PathState, text: str | None) -> bool | None:
    for fact_text, value in state.facts:
        if fact_text == text:
            return value
    return None


_NO_NAMES: set[str] = set()


def _forget_facts(
    state: PathState,
    names: set[str],
    fact_names: dict[str, set[str]],
    keep: Iterable[str] = (),
) -> PathState:
    """Drop the branch facts that mention a name just assigned, except the modular facts of
    the counters in ``keep`` (they are shifted instead)."""
    if not names or not state.facts:
        return state
    if not any(fact_names.get(text, _NO_NAMES) & names for text, _ in state.facts):
        return state
    prefixes = tuple(f"%{c}%" for c in keep)
    kept = frozenset(
        f
        for f in state.facts
        if not fact_names.get(f[0], set()) & names or (prefixes and f[0].startswith(prefixes))
    )
    return state if len(kept) == len(state.facts) else replace(state, facts=kept)


def _merge(a: Flow, b: Flow) -> Flow:
    return Flow(
        normal=a.normal | b.normal,
        breaks=a.breaks | b.breaks,
        continues=a.continues | b.continues,
        returns=a.returns | b.returns,
    )


def _cap(states: set[PathState]) -> set[PathState]:
    """Keep the number of paths bounded: first join paths whose protocol states agree (keeping
    the branch facts they share), then forget facts, then keep a stable subset."""
    if len(states) <= MAX_STATES:
        return states
    joined: dict[tuple[object, ...], PathState] = {}
    for state in states:
        key = (state.opts, state.last_zeroed)
        other = joined.get(key)
        joined[key] = state if other is None else replace(other, facts=other.facts & state.facts)
    states = set(joined.values())
    if len(states) <= MAX_STATES:
        return states
    states = {replace(s, facts=frozenset()) for s in states}
    if len(states) <= MAX_STATES:
        return states
    return set(sorted(states, key=repr)[:MAX_STATES])


# --- entry -------------------------------------------------------------------------------------


def analyze_module(module: cst.Module) -> FileModel:
    """Run every entry point of the file: the module body, then each function and method."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 4000))
    try:
        return _analyze(module)
    finally:
        sys.setrecursionlimit(limit)
        _ATTR_CACHE.clear()


def _analyze(module: cst.Module) -> FileModel:
    ctx = FileContext(module)
    model = FileModel()
    interp = Interpreter(ctx, model)
    module_frame = Frame(ctx, None, None, {}, None, "<module>")
    root = RootSummary("<module>", referenced=False)
    model.roots.append(root)
    interp.run_root(module_frame, module.body, root)
    for func, cls in _all_functions(ctx):
        if id(func) not in ctx.relevant:
            continue
        name = func.name.value
        scope = f"{cls.name}.{name}" if cls is not None else name
        frame = Frame(ctx, func, cls, {}, module_frame, scope)
        root = RootSummary(scope, referenced=name in ctx.referenced)
        model.roots.append(root)
        interp.run_root(
            frame, func.body.body if isinstance(func.body, cst.IndentedBlock) else [func.body], root
        )
    return model


def _all_functions(ctx: FileContext) -> Iterable[tuple[cst.FunctionDef, ClassInfo | None]]:
    for func in ctx.functions.values():
        yield func, None
    for info in ctx.classes.values():
        for method in info.methods.values():
            yield method, info
