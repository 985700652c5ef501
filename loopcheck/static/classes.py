"""What a class defined in a linted file is: its bases along the MRO, methods, the values its
attributes take, and whether it is a module, a Lightning module or an optimizer."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import libcst as cst

from loopcheck.static.tree import walk

if TYPE_CHECKING:
    from loopcheck.static.index import FileContext

_MODULE_BASES = {"Module", "LightningModule", "PreTrainedModel"}


@dataclass(eq=False)
class ClassInfo:
    """A class defined in some linted file."""

    name: str
    node: cst.ClassDef
    ctx: FileContext
    base_names: list[str]  # qualified through the file's imports
    methods: dict[str, cst.FunctionDef]
    attr_values: dict[str, list[tuple[cst.BaseExpression, cst.FunctionDef]]]
    class_values: dict[str, cst.BaseExpression] = field(default_factory=dict)
    # ``self.optimizers["critic"] = Adam(...)``: (key or None, value, method) per attribute
    item_values: dict[str, list[tuple[object, cst.BaseExpression, cst.FunctionDef]]] = field(
        default_factory=dict
    )
    _bases: list[ClassInfo] | None = None
    _calls_inherited: bool | None = None

    @property
    def bases(self) -> list[ClassInfo]:
        """The base classes defined in linted files (this one or another)."""
        if self._bases is None:
            self._bases = []  # guards against cycles while resolving
            found = [self.ctx.resolve_class(name) for name in self.base_names]
            self._bases = [b for b in found if b is not None and b is not self]
        return self._bases

    def mro(self) -> Iterator[ClassInfo]:
        seen: set[int] = set()
        stack = [self]
        while stack:
            info = stack.pop(0)
            if id(info) in seen:
                continue
            seen.add(id(info))
            yield info
            stack.extend(info.bases)

    def _any_base(self, names: set[str]) -> bool:
        return any(b.rsplit(".", 1)[-1] in names for info in self.mro() for b in info.base_names)

    @property
    def is_module(self) -> bool:
        return self._any_base(_MODULE_BASES)

    @property
    def is_lightning(self) -> bool:
        return self._any_base({"LightningModule"})

    @property
    def is_abstract(self) -> bool:
        """Declared abstract: derived from ``ABC`` (or a ``Protocol``)."""
        return self._any_base({"ABC", "ABCMeta", "Protocol"})

    @property
    def is_optimizer(self) -> bool:
        return self._any_base({"Optimizer"})

    @property
    def is_scheduler(self) -> bool:
        """A learning-rate schedule built on torch's (``class LRPolicyScheduler(_LRScheduler)``)."""
        return self._any_base({"_LRScheduler", "LRScheduler"})

    @property
    def unresolved_bases(self) -> bool:
        """Some base class is defined outside the linted files (it may define anything)."""
        for info in self.mro():
            for name in info.base_names:
                last = name.rsplit(".", 1)[-1]
                if last in _MODULE_BASES or last in {"object", "ABC", "Generic", "Protocol"}:
                    continue
                if info.ctx.resolve_class(name) is None:
                    return True
        return False

    def method(self, name: str) -> tuple[ClassInfo, cst.FunctionDef] | None:
        """The method ``name`` as this class resolves it (own, then its bases')."""
        for info in self.mro():
            if name in info.methods:
                return info, info.methods[name]
        return None

    def calls_inherited(self) -> bool:
        """Whether a method of this class (or of its linted bases) calls a method of ``self``
        that no linted class defines: one of a base class defined elsewhere."""
        if self._calls_inherited is None:
            self._calls_inherited = False
            for info in self.mro():
                for method in info.methods.values():
                    for node in walk(method.body):
                        if type(node) is not cst.Call:
                            continue
                        name = self_attribute(node.func)
                        if name is not None and self.method(name) is None:
                            if not any(self.attribute_values(name)):
                                self._calls_inherited = True
                                return True
        return self._calls_inherited

    def method_aliases(self, attr: str) -> list[str]:
        """The methods that ``self.<attr>`` is bound to (``self.step_fn = self._step``, kept
        when wrapped again: ``self.step_fn = compile(self.step_fn)``); none when some value
        assigned to it is anything else."""
        aliases: list[str] = []
        for _, value, _ in self.attribute_values(attr):
            if type(value) is cst.Call and any(
                self_attribute(arg.value) in (attr, *aliases) for arg in value.args
            ):
                continue  # the same function wrapped
            name = self_attribute(value)
            if name is None or name == attr or self.method(name) is None:
                return []
            aliases.append(name)
        return aliases

    def attribute_values(
        self, attr: str
    ) -> Iterator[tuple[ClassInfo, cst.BaseExpression, cst.FunctionDef | None]]:
        """Every value assigned to ``self.<attr>`` (or the class attribute) along the MRO."""
        for info in self.mro():
            for value, method in info.attr_values.get(attr, ()):
                yield info, value, method
            if attr in info.class_values:
                yield info, info.class_values[attr], None


def self_attribute(expr: cst.BaseExpression) -> str | None:
    """``attr`` for ``self.attr``."""
    if type(expr) is cst.Attribute and type(expr.value) is cst.Name and expr.value.value == "self":
        return expr.attr.value
    return None


def self_uses(cls: ClassInfo) -> tuple[frozenset[str], frozenset[str]]:
    """The attributes of ``self`` that a class's methods (its bases' too) call as functions
    (``self._model(**batch)``), and those they switch with ``.eval()`` or ``.train()``;
    read once per class."""

    def read() -> tuple[frozenset[str], frozenset[str]]:
        called, switched = set(), set()
        for info in cls.mro():
            for node in walk(info.node):
                if type(node) is not cst.Call:
                    continue
                attr = self_attribute(node.func)
                if attr is not None:
                    called.add(attr)
                elif type(node.func) is cst.Attribute and node.func.attr.value in ("eval", "train"):
                    attr = self_attribute(node.func.value)
                    if attr is not None:
                        switched.add(attr)
        return frozenset(called), frozenset(switched)

    return cls.ctx.remember("used on self", cls.node, read)


def is_test_class(name: str) -> bool:
    """A class named as a container of unit tests (``TestTrainer``, ``DistributedTest``,
    ``ModelTests``, peft's mixin ``PeftCommonTester``): a test runner calls its methods, once
    each, on fresh fixtures."""
    return name.startswith("Test") or name.endswith(("Test", "Tests", "Tester"))


def schedule_keyed_elsewhere(cls: ClassInfo | None) -> bool:
    """Whether a learning-rate scheduler class of the linted files sets its position in the
    schedule from something other than the number of its own ``step()`` calls (NVIDIA BERT's
    ``PolyWarmUpScheduler``: ``self.last_epoch = param_group["step"] + 1``, the optimizer's own
    count): when it is called against the optimizer's step then shifts nothing. A ``step()``
    that counts its calls (``self.last_epoch + 1``, ``super().step()``) or is torch's: False."""
    found = cls.method("step") if cls is not None else None
    if found is None:
        return False
    owner, step = found
    return owner.ctx.remember("schedule keyed elsewhere", step, lambda: _keyed_elsewhere(step))


def _keyed_elsewhere(step: cst.FunctionDef) -> bool:
    assigned = counted = False
    for node in walk(step.body):
        if type(node) is cst.Call and type(node.func) is cst.Attribute:
            # ``super().step()``, ``Base.step(self)``: counted there
            counted |= node.func.attr.value == "step"
        elif type(node) is cst.AugAssign and _last_epoch(node.target):
            counted = True
        elif type(node) is cst.Assign and any(_last_epoch(t.target) for t in node.targets):
            read = list(walk(node.value))
            if any(_steps_read(n) for n in read):
                # ``self.last_epoch = state["step"] + 1`` on some branch (NVIDIA's mixed-
                # precision schedulers): keyed to the optimizer's own count where it matters
                return True
            # ``self.last_epoch = self.last_epoch + 1`` (on some branch): counted
            counted |= any(_last_epoch(n) for n in read)
            assigned = True
    return assigned and not counted


def _steps_read(node: cst.CSTNode) -> bool:
    """``param_group["step"]``, ``state_dict['step']``: an optimizer's own step count."""
    if type(node) is not cst.Subscript or len(node.slice) != 1:
        return False
    index = node.slice[0].slice
    return (
        type(index) is cst.Index
        and type(index.value) is cst.SimpleString
        and index.value.evaluated_value == "step"
    )


def _last_epoch(node: cst.CSTNode) -> bool:
    return (
        type(node) is cst.Attribute
        and node.attr.value == "last_epoch"
        and type(node.value) is cst.Name
        and node.value.value == "self"
    )
