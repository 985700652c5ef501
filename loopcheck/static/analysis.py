"""The entry points of a file's analysis: the module body, every function, every method in the
context of each class that inherits it, and methods a framework calls in a loop of its own."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from functools import partial

import libcst as cst

from loopcheck.static.callees import handed_callbacks
from loopcheck.static.classes import ClassInfo, is_test_class
from loopcheck.static.frames import Frame, module_frame
from loopcheck.static.index import FileContext
from loopcheck.static.interpreter import Interpreter
from loopcheck.static.model import FileModel, RootSummary
from loopcheck.static.project import Project
from loopcheck.static.relevance import CLEARING_NAMES
from loopcheck.static.roles import Obj, Role, constructed_role
from loopcheck.static.syntax import all_params, called_name, dotted, returns_of
from loopcheck.static.tensors import unit_test
from loopcheck.static.tree import forget, kids, walk
from loopcheck.static.wrappers import check_wrappers

# Parameters a framework passes as the iteration counter of its own loop.
_FRAMEWORK_COUNTERS = ("batch_idx", "batch_nb", "batch_index")


def analyze(
    module: cst.Module,
    path: str = "<stdin>",
    project: Project | None = None,
    source: str | None = None,
) -> FileModel:
    """Build the model of one parsed file (``project``: the files linted with it; ``source``:
    the text it was parsed from, which makes finding positions cheaper)."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 4000))
    forget()
    try:
        ctx = (
            project.context(path, module, source)
            if project is not None
            else FileContext(module, path, source=source)
        )
        return _analyze(ctx)
    finally:
        sys.setrecursionlimit(limit)


def _analyze(ctx: FileContext) -> FileModel:
    model = FileModel()
    if _other_framework(ctx):
        return model
    interp = Interpreter(model)
    top = module_frame(ctx)
    root = RootSummary("<module>")
    model.roots.append(root)
    interp.run_root(top, ctx.module.body, root)
    for func, cls, scope in _entry_points(ctx):
        frame = Frame(ctx, func, cls, {}, top, scope)
        root = RootSummary(scope, partial(_referenced, ctx, func, cls))
        root.model_api = cls is not None and _model_class(cls)
        root.unit_test = unit_test(ctx, func)
        model.roots.append(root)
        implicit = _implicit_loop(ctx, func, cls, scope)
        body = _statements(func)
        if implicit:
            interp.run_root(frame, body, root, implicit_loop=func, counter=_counter(func))
        else:
            interp.run_root(frame, body, root)
        for callback, returned in handed_callbacks(ctx, func):
            # run by the framework it is handed to, or by the caller it is returned to, once
            # per batch: a loop of its own, its free names those of the function defining it
            inner = Frame(ctx, callback, None, {}, frame, callback.name.value)
            root = RootSummary(f"{scope}.{callback.name.value}")
            model.roots.append(root)
            interp.run_root(
                inner,
                _statements(callback),
                root,
                implicit_loop=callback,
                counter=_counter(callback),
                caller_clears=returned and not _clears_every_call(callback),
            )
    check_wrappers(ctx, model)
    return model


# Deep-learning frameworks whose training loops look like PyTorch's but are not (MegEngine's
# modules have eval() too, TensorFlow's optimizers step).
_OTHER_FRAMEWORKS = {
    "megengine", "tensorflow", "keras", "jax", "flax", "paddle", "mindspore", "oneflow", "mxnet",
}  # fmt: skip


def _other_framework(ctx: FileContext) -> bool:
    """A file written for another framework, importing no torch: nothing here applies."""
    roots = {qual.split(".", 1)[0] for qual in ctx.imports.aliases.values()}
    return bool(roots & _OTHER_FRAMEWORKS) and "torch" not in roots


def _model_class(cls: ClassInfo) -> bool:
    """A model: an ``nn.Module`` (not a LightningModule, whose hooks the framework runs), or
    a class of unknown bases that defines ``forward``."""
    if cls.is_lightning:
        return False
    return cls.is_module or any("forward" in info.methods for info in cls.mro())


def _referenced(ctx: FileContext, func: cst.FunctionDef, cls: ClassInfo | None) -> bool:
    """Whether callers may give a function its context: it is named elsewhere in its file, or
    it is a public function of the module that another linted file names (it may import and
    call it; a method is judged with its class: a base class calls it, or a framework)."""
    name = func.name.value
    if name in ctx.referenced:
        return True
    public = cls is None and not name.startswith("_")
    project = ctx.project
    return public and project is not None and project.mentioned_elsewhere(ctx.path, name)


def _entry_points(ctx: FileContext) -> Iterator[tuple[cst.FunctionDef, ClassInfo | None, str]]:
    """Each relevant function, each relevant method in its own class, and each inherited
    method in the context of a subclass that overrides something (``self.run_step()`` in a
    base class's loop then runs the subclass's ``run_step``)."""
    for func in ctx.functions.values():
        if id(func) in ctx.relevant:
            yield func, None, func.name.value
        for inner in _returned_closures(func):
            # a factory's step function (``optimize_fn = optimization_manager(config)``):
            # called elsewhere, analysed on its own
            if id(inner) in ctx.relevant:
                yield inner, None, f"{func.name.value}.{inner.name.value}"
    for info in ctx.classes.values():
        for method in info.methods.values():
            if id(method) in ctx.relevant:
                yield method, info, f"{info.name}.{method.name.value}"
        if not info.methods:
            continue
        for base in list(info.mro())[1:]:
            for name, method in base.methods.items():
                if name in info.methods or id(method) not in base.ctx.relevant:
                    continue
                if base.ctx is not ctx:
                    continue  # analysed with the base's own file
                owner = info.method(name)
                if owner is not None and owner[1] is method:
                    yield method, info, f"{info.name}.{name}"


def _returned_closures(func: cst.FunctionDef) -> list[cst.FunctionDef]:
    """The functions defined in ``func``'s own body that it returns by name."""
    defs = {stmt.name.value: stmt for stmt in _statements(func) if type(stmt) is cst.FunctionDef}
    if not defs:
        return []
    returned = {
        value.value
        for _, value in returns_of(func)
        if type(value) is cst.Name and value.value in defs
    }
    return [defs[name] for name in sorted(returned)]


def _clears_every_call(func: cst.FunctionDef) -> bool:
    """Whether a step closure clears gradients by itself on every call (a ``zero_grad()``
    among its top-level statements): its caller need not, and no clear of the caller's is
    assumed. One that clears on some calls only (ignite's ``update``, at the start of each
    accumulation window) leaves the rest to the caller as before."""
    return any(
        type(small) is cst.Expr
        and type(small.value) is cst.Call
        and called_name(small.value) in CLEARING_NAMES
        for stmt in func.body.body
        if type(stmt) is cst.SimpleStatementLine
        for small in stmt.body
    )


def _implicit_loop(
    ctx: FileContext, func: cst.FunctionDef, cls: ClassInfo | None, scope: str
) -> bool:
    """A method that steps an optimizer its instance owns, and that nothing in this file calls
    in a loop, is the body of a loop some framework runs (Lightning, RL algorithms, trainers).
    A function stepping a local optimizer or one passed in is not: its caller owns the loop."""
    if cls is None or func.name.value in ctx.called_in_loop or func.name.value == "__init__":
        return False
    if func.name.value.startswith("test") or is_test_class(cls.name):
        return False  # a test runner calls each test once, on a fresh fixture
    wrapper = "optim" in cls.name.lower() and func.name.value in ("step", "zero_grad")
    if cls.is_optimizer or wrapper:
        return False  # an optimizer (or its wrapper) of its own: its caller's loop steps it
    return _steps_owned(ctx, func, cls, scope, depth=0) or _update_never_stepped(
        ctx, func, cls, scope
    )


def _update_never_stepped(
    ctx: FileContext, func: cst.FunctionDef, cls: ClassInfo, scope: str
) -> bool:
    """Whether a method clears an optimizer its instance holds and runs a backward, outside
    any loop of its own, while nothing in the file ever steps that optimizer (tianshou's
    ``AutoAlpha.update`` with its ``self._optim.step()`` lost): it owns the update, and its
    framework's loop runs it, so the missing step is its own."""
    frame = Frame(ctx, func, cls, {}, module_frame(ctx), scope)
    cleared: set[str] = set()
    backward = False
    for node in _outside_loops(func.body):
        if not (type(node) is cst.Call and type(node.func) is cst.Attribute):
            continue
        method = node.func.attr.value
        if method == "backward":
            backward = True
        elif method == "zero_grad":
            obj = frame.resolve(node.func.value)
            if obj is not None and obj.role is Role.OPTIMIZER and _held_by(obj, cls):
                cleared.add(dotted(node.func.value) or "")
    if not backward or not cleared or "" in cleared:
        return False
    # its name stepped anywhere (``self._optim.step()``, a trainer's ``alpha._optim.step()``)
    # or handed to a call (``scaler.step(self._optim)``, a helper): someone may step it
    names = {chain.rsplit(".", 1)[-1] for chain in cleared}
    return not _stepped_or_handed(ctx, cls, names)


def _stepped_or_handed(ctx: FileContext, cls: ClassInfo, names: set[str]) -> bool:
    """Whether a call of the file steps an object of one of these names, or is handed one; not
    the class's own constructor (``MyTrainUnit(module, optimizer, ...)`` is how it gets it)
    nor a scheduler's (``ExponentialLR(optimizer, gamma=0.9)`` only reads its learning rate)."""
    for node in walk(ctx.module):
        if type(node) is not cst.Call:
            continue
        func = node.func
        if (
            type(func) is cst.Attribute
            and func.attr.value == "step"
            and (dotted(func.value) or "").rsplit(".", 1)[-1] in names
        ):
            return True  # ``self._optim.step()``
        if not any((dotted(a.value) or "").rsplit(".", 1)[-1] in names for a in node.args):
            continue
        called = (dotted(node.func) or "").rsplit(".", 1)[-1]
        qual = (
            ctx.imports.qualify(node.func) if type(node.func) in (cst.Name, cst.Attribute) else None
        )
        if called == cls.name or constructed_role(qual or called) is Role.SCHEDULER:
            continue
        return True
    return False


def _steps_owned(
    ctx: FileContext, func: cst.FunctionDef, cls: ClassInfo, scope: str, depth: int
) -> bool:
    """Whether a method (or a method of ``self`` it calls) steps an optimizer held by the
    instance, outside any loop of its own: ``self.optimizer.step()``,
    ``self.policy.optimizer.step()``, Lightning's ``self.optimizers()``. A method whose step is
    inside its own loop (an epoch loop in ``fit``) runs that loop itself."""
    frame = Frame(ctx, func, cls, {}, module_frame(ctx), scope)
    for node in _outside_loops(func.body):
        if not (type(node) is cst.Call and type(node.func) is cst.Attribute):
            continue
        method = node.func.attr.value
        receiver = node.func.value
        on_self = type(receiver) is cst.Name and receiver.value == "self"
        found = cls.method(method) if on_self else None
        if found is not None:
            # a method of its own, ``self.step()`` of an optimizer wrapper included
            # (mmengine's ``OptimWrapper.update_params``)
            if depth == 0 and id(found[1]) in found[0].ctx.relevant:
                if _steps_owned(found[0].ctx, found[1], cls, scope, depth + 1):
                    return True
        elif method == "step":
            obj = frame.resolve(receiver)
            if obj is not None and obj.role is Role.SCALER and node.args:
                obj = frame.resolve(node.args[0].value)  # ``scaler.step(self.optimizer)``
            if obj is None or obj.role not in (Role.OPTIMIZER, Role.ENGINE):
                continue
            if _held_by(obj, cls):
                return True
    return False


def _held_by(obj: Obj, cls: ClassInfo) -> bool:
    """Whether an object is an attribute of the class's instance: attribute keys are
    ``Class.attr``; locals and parameters are ``scope:name``."""
    return obj.key.startswith(f"{cls.name}.") and ":" not in obj.key


def _outside_loops(body: cst.CSTNode) -> list[cst.CSTNode]:
    """The nodes of a body that are not inside one of its loops (nor nested definitions)."""
    out: list[cst.CSTNode] = []
    stack: list[cst.CSTNode] = [body]
    while stack:
        node = stack.pop()
        if type(node) in (cst.For, cst.While, cst.FunctionDef, cst.ClassDef, cst.Lambda):
            continue
        out.append(node)
        stack.extend(kids(node))
    return out


def _statements(func: cst.FunctionDef) -> list[cst.BaseStatement]:
    """A function's body as statements (``def f(): return x`` has one, on its line)."""
    body = func.body
    return list(body.body) if type(body) is cst.IndentedBlock else [body]  # type: ignore[list-item]


def _counter(func: cst.FunctionDef) -> str | None:
    names = {p.name.value for p in all_params(func)}
    return next((n for n in _FRAMEWORK_COUNTERS if n in names), None)
