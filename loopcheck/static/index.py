"""The index of one file: its functions, classes, imports, positions, which functions can take
part in a training step, and which branch conditions repeat — computed once, in one walk."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import libcst as cst

from loopcheck.diagnostic import Span
from loopcheck.static import stubs
from loopcheck.static.classes import ClassInfo, is_test_class, self_attribute
from loopcheck.static.conditions import condition_key, counter_sign, modular, modulus_of
from loopcheck.static.counters import cycled_range, range_length, zipped_targets
from loopcheck.static.model import Site
from loopcheck.static.positions import Range, Statements, positions, statement_positions
from loopcheck.static.relevance import move_word, names_move, relevant_functions, two_ways
from loopcheck.static.roles import Imports
from loopcheck.static.syntax import (
    all_params,
    assignments,
    chains_in,
    evaluation_order,
    incremented,
    literal_index,
    loop_assigned,
    method_calls,
    nested_defs,
    without_not,
)
from loopcheck.static.tree import is_expression, kids

_T = TypeVar("_T")

if TYPE_CHECKING:
    from loopcheck.static.project import Project

# Calls that run a function handed to them as a program's entry point (a command line, one
# process per device): naming it there gives it no caller whose context it needs.
_LAUNCHERS = frozenset(
    {
        "fire.Fire", "typer.run", "jsonargparse.CLI", "torch.multiprocessing.spawn",
        "torch.multiprocessing.start_processes", "multiprocessing.Process",
        "torch.multiprocessing.Process",
    }
)  # fmt: skip
_LAUNCHER_NAMES = frozenset(q.rsplit(".", 1)[-1] for q in _LAUNCHERS)
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

# ``evaluate``, ``validate``, ``run_validation``, ``test`` or ``*_test`` (not pytest's ``test_*``)
EVALUATING = re.compile(r"(?i)(eval|valid|predict|infer)|^test$|_test$")


@dataclass
class FunctionInfo:
    """What one function's text says, independent of any call context (computed once)."""

    local_values: dict[str, list[cst.BaseExpression]]
    tuple_values: dict[str, list[tuple[int, cst.BaseExpression]]]
    local_defs: dict[str, cst.FunctionDef]
    params: dict[str, str | None]
    loop_targets: dict[str, cst.BaseExpression]  # ``for x in <iter>``: the iterable of x
    # ``optimizers["critic"] = Adam(...)``: what is stored under each key of a local container
    item_values: dict[str, list[tuple[object, cst.BaseExpression]]] = field(default_factory=dict)


class FileContext:
    """Definitions, imports and positions of one file, computed once."""

    def __init__(
        self,
        module: cst.Module,
        path: str = "<stdin>",
        project: Project | None = None,
        source: str | None = None,
    ):
        self.module = module
        self.path = path
        self.project = project
        self.source = source  # the text ``module`` was parsed from, when the caller has it
        self._positions: Mapping[cst.CSTNode, Range] | None = None
        self._statement_positions: dict[int, Mapping[cst.CSTNode, Range] | None] = {}
        self._statements: Statements | None = None
        self._order: dict[int, int] | None = None
        self._functions_info: dict[int, FunctionInfo] = {}
        self._loop_assigned: dict[int, set[str]] = {}
        self._target_names: dict[int, frozenset[str]] = {}
        self._evaluation: dict[int, list[cst.CSTNode]] = {}
        self._incremented: dict[int, set[str]] = {}
        self._code: dict[int, str] = {}
        self.imports = Imports(module)
        self.functions: dict[str, cst.FunctionDef] = {}
        self.classes: dict[str, ClassInfo] = {}
        self.referenced: set[str] = set()  # names read (not those only handed to a launcher)
        self.called_in_loop: set[str] = set()  # names called somewhere inside a loop body
        self.tracked_conditions: set[str] = set()
        self.relevant: set[int] = set()  # ids of the functions that may take part in a step
        self.tracked_moduli: set[str] = set()
        # counters that cycle through a range beside the data, with the range's length
        self.cycles: dict[str, str] = {}  # counter%modulus pairs guarding two branches
        # names whose sign a condition tests (``i > 0``, ``if step == 0:``): only their counters
        # carry the fact of the first iteration
        self.sign_tested: set[str] = set()
        self.fact_names: dict[str, set[str]] = {}
        self.module_frame: object = None  # set by the frames module on first use
        # blocks asserting that .grad is None (with the block: see ``probes``)
        self.probes_cache: dict[int, tuple[object, bool]] = {}
        self._remembered: dict[tuple[str, int], object] = {}  # see ``remember``
        _Indexer(self).index(module)

    # definitions across files

    def resolve_class(self, qualname: str) -> ClassInfo | None:
        """A class named by a qualified name of this file: defined here, or in a linted file."""
        if qualname in self.classes:
            return self.classes[qualname]
        if self.project is None or "." not in qualname and qualname not in self.imports.aliases:
            return None
        found = self.project.definition(self, qualname)
        return found[1] if found is not None and isinstance(found[1], ClassInfo) else None

    def external(self, qualname: str) -> tuple[FileContext, cst.FunctionDef | ClassInfo] | None:
        """A function or class of another linted file that an imported name refers to."""
        if self.project is None:
            return None
        return self.project.definition(self, qualname)

    def sole_method(self, name: str) -> tuple[ClassInfo, cst.FunctionDef] | None:
        """The method ``name`` when one class of this file alone defines it and it takes part
        in a training step: what ``agent.update()`` or ``model.validation_step(b)`` runs when
        the receiver's class is not known."""
        found = [
            (info, info.methods[name])
            for info in self.classes.values()
            if name in info.methods and id(info.methods[name]) in self.relevant
        ]
        return found[0] if len(found) == 1 else None

    def subclasses(self, info: ClassInfo) -> list[ClassInfo]:
        """Classes of this file that derive from ``info`` (directly or not)."""
        return [c for c in self.classes.values() if c is not info and info in list(c.mro())]

    # cached per-node facts

    def remember(self, kind: str, node: cst.CSTNode | None, compute: Callable[[], _T]) -> _T:
        """``compute()``, once per ``kind`` of question and node of this file (or None, the
        module body): the answers other modules ask again at every call site or iteration."""
        key = (kind, id(node))
        if key in self._remembered:
            return self._remembered[key]  # type: ignore[return-value]
        found = self._remembered[key] = compute()
        return found

    def method_calls(self, node: cst.CSTNode) -> dict[str, list[cst.Call]]:
        """:func:`syntax.method_calls` under ``node``, cached per node."""
        return self.remember("method-calls", node, lambda: method_calls(node))

    def function_info(self, func: cst.FunctionDef | None) -> FunctionInfo:
        key = id(func)
        info = self._functions_info.get(key)
        if info is None:
            info = self._functions_info[key] = _function_info(self, func)
        return info

    def target_names(self, stmt: cst.CSTNode, targets: list[cst.BaseExpression]) -> frozenset[str]:
        key = id(stmt)
        names = self._target_names.get(key)
        if names is None:
            names = frozenset().union(*(chains_in(t) for t in targets)) if targets else frozenset()
            self._target_names[key] = names
        return names

    def loop_assigned(self, stmt: cst.CSTNode) -> set[str]:
        key = id(stmt)
        names = self._loop_assigned.get(key)
        if names is None:
            names = self._loop_assigned[key] = loop_assigned(stmt)
        return names

    def incremented(self, body: cst.CSTNode) -> set[str]:
        key = id(body)
        names = self._incremented.get(key)
        if names is None:
            names = self._incremented[key] = incremented(body)
        return names

    def evaluation_order(self, expr: cst.CSTNode) -> list[cst.CSTNode]:
        key = id(expr)
        nodes = self._evaluation.get(key)
        if nodes is None:
            nodes = self._evaluation[key] = evaluation_order(expr)
        return nodes

    # positions

    def span(self, node: cst.CSTNode) -> Span:
        line, column, end_line, end_column = self._range(node)
        return Span(line, column + 1, end_line, end_column + 1)

    def _range(self, node: cst.CSTNode) -> Range:
        """Positions need code generation: only files with findings pay it, and, while the
        text is at hand, only for the innermost statement around the node that the text places
        (see ``statement_positions``)."""
        if self._positions is None and self.source is not None:
            if self._statements is None:
                self._statements = Statements(self.module)
            statement = self._statements.owner.get(id(node))
            while statement is not None:
                key = id(statement)
                parent, indents = self._statements.around[key]
                if key not in self._statement_positions:
                    self._statement_positions[key] = statement_positions(
                        self.module, self.source, statement, indents
                    )
                partial = self._statement_positions[key]
                if partial is not None and node in partial:
                    return partial[node]
                statement = parent
        if self._positions is None:
            self._positions = positions(self.module)
        return self._positions[node]

    def site(self, node: cst.CSTNode) -> Site:
        return Site(node, self.span, self.module.code_for_node, self.order, self.path)

    def order(self, node: cst.CSTNode) -> int:
        """The rank of ``node`` in a walk of the file in source order (cheaper than a span)."""
        if self._order is None:
            self._order = {}
            stack: list[cst.CSTNode] = [self.module]
            while stack:
                current = stack.pop()
                self._order[id(current)] = len(self._order)
                stack.extend(reversed(kids(current)))
        return self._order.get(id(node), -1)

    def code(self, node: cst.CSTNode) -> str:
        key = id(node)
        text = self._code.get(key)
        if text is None:
            text = self._code[key] = self.module.code_for_node(node).strip()
        return text


class _Indexer:
    """One pass over the file: definitions, references, repeated branch conditions."""

    def __init__(self, ctx: FileContext) -> None:
        self.ctx = ctx
        self.condition_counts: dict[str, int] = {}
        self.alternatives: set[str] = set()  # conditions choosing between two ways of training
        self.moduli_counts: dict[str, int] = {}
        self.modular_ifs: list[tuple[str, cst.If]] = []  # (modulus, the if it guards)
        # flags assigned a step guard (``is_last = (i + 1) % n == 0``), tested by name later
        self.guard_flags: list[tuple[str, cst.Comparison]] = []
        # functions called through an imported module (``steps.train_step``): (alias, name)
        self.module_calls: set[tuple[str, str]] = set()

    def index(self, module: cst.Module) -> None:
        nested: list[cst.ClassDef] = []
        for stmt in module.body:
            if type(stmt) is cst.FunctionDef:
                self.ctx.functions.setdefault(stmt.name.value, stmt)
            elif type(stmt) is cst.ClassDef:
                self._class(stmt)
                nested.extend(_nested_classes(stmt))
        for node in nested:
            # ``class Algorithm: class Optimizer:``, a wrapper defined inside the class that
            # uses it: known by its own name, unless a class of the module already is
            if node.name.value not in self.ctx.classes:
                self._class(node)
        # One walk: references, repeated conditions, and per function (the innermost one
        # around each node) whether it mentions a move and which names it calls.
        mentions: dict[int, bool] = {}
        calls: dict[int, set[str]] = {}
        enclosing: dict[int, int | None] = {}
        by_name: dict[str, list[int]] = {}
        params: dict[int, set[str]] = {}
        stack: list[tuple[cst.CSTNode, int | None, bool]] = [(module, None, False)]
        launched: set[int] = set()  # ``fire.Fire(train)``: the launched function's name
        while stack:
            node, owner, in_loop = stack.pop()
            kind = type(node)
            if kind is cst.Name:
                if id(node) in launched:
                    continue
                self.ctx.referenced.add(node.value)
                if owner is not None and move_word(node):
                    mentions[owner] = True  # (a ``step`` only when called: see Call)
                continue
            if kind is cst.Attribute:
                attr = node.attr.value
                value = node.value
                on_self = type(value) is cst.Name and value.value == "self"
                if on_self or attr not in _MODULE_API:
                    self.ctx.referenced.add(attr)
                if owner is not None and (move_word(node) or attr in ("eval", "train")):
                    # ``.eval()``: an evaluation pass (LC502, LC503); ``.train()``: its end
                    mentions[owner] = True
                stack.append((value, owner, in_loop))
                continue
            if kind is cst.FunctionDef:
                key = id(node)
                mentions.setdefault(key, False)
                calls.setdefault(key, set())
                enclosing[key] = owner
                by_name.setdefault(node.name.value, []).append(key)
                params[key] = {p.name.value for p in all_params(node)}
                if EVALUATING.search(node.name.value):
                    mentions[key] = True
                stack.extend((c, key, False) for c in kids(node) if c is not node.name)
                continue
            if kind is cst.ClassDef:
                stack.extend((c, owner, in_loop) for c in kids(node) if c is not node.name)
                continue
            if kind is cst.Call:
                func = node.func
                name = None
                if type(func) is cst.Name:
                    name = func.value
                elif type(func) is cst.Attribute:
                    name = func.attr.value
                    if type(func.value) is cst.Name:
                        self.module_calls.add((func.value.value, name))
                if name in _LAUNCHER_NAMES and self.ctx.imports.qualify(func) in _LAUNCHERS:
                    launched |= {
                        id(arg.value)
                        for i, arg in enumerate(node.args)
                        if type(arg.value) is cst.Name
                        and (
                            (i == 0 and arg.keyword is None)
                            or (arg.keyword is not None and arg.keyword.value == "target")
                        )
                    }
                if name is not None:
                    if owner is not None:
                        calls[owner].add(name)
                        if name == "step":
                            # a step called, not a counter read (``self.step`` in a logger)
                            mentions[owner] = True
                        if type(func) is cst.Name and name in params.get(owner, ()):
                            calls[owner].add("__call__")  # a callable object handed in
                    if in_loop and not (
                        type(func) is cst.Attribute
                        and name in _MODULE_API
                        and not (type(func.value) is cst.Name and func.value.value == "self")
                    ):
                        # (``env.step(action)`` in a rollout loop does not call a ``step``
                        # method of this file in a loop; ``self.step()`` would)
                        self.ctx.called_in_loop.add(name)
            elif kind is cst.If or kind is cst.While:
                self._condition(node.test, node if kind is cst.If else None)
                if kind is cst.If and node.orelse is not None and two_ways(node):
                    key = condition_key(self.ctx.code, node.test)[0]
                    if key is not None:
                        self.alternatives.add(key)
            elif kind is cst.Arg and type(node.value) is cst.Comparison:
                self._condition(node.value)  # a condition handed to a helper
            elif (
                kind is cst.Assign
                and type(node.value) is cst.Comparison
                and len(node.targets) == 1
                and type(node.targets[0].target) is cst.Name
            ):
                self.guard_flags.append((node.targets[0].target.value, node.value))
            if kind is cst.For or kind is cst.While:
                if kind is cst.For and (cycled := cycled_range(node)) is not None:
                    length = range_length(cycled[1])
                    if length is not None:
                        self.ctx.cycles[cycled[0]] = self.ctx.code(length[0])
                body = node.body
                stack.extend((c, owner, in_loop or c is body) for c in kids(node))
                continue
            stack.extend((c, owner, in_loop) for c in kids(node))
        self.ctx.tracked_conditions = {
            t for t, n in self.condition_counts.items() if n > 1 or t in self.alternatives
        }
        for name, value in self.guard_flags:
            # each test of the flag tests its guard: the modulus is tracked like a repeated
            # ``if (i + 1) % n == 0:``
            guard = modular(self.ctx.code, value, self.ctx.cycles)
            tests = self.condition_counts.get(name, 0)
            if guard is not None and tests:
                modulus = modulus_of(guard[0])
                self.moduli_counts[modulus] = self.moduli_counts.get(modulus, 0) + tests
        external = self._external(calls)
        if any(
            id(c.methods["__call__"]) in {k for k, yes in mentions.items() if yes}
            for c in self.ctx.classes.values()
            if "__call__" in c.methods
        ):
            external.add("__call__")  # a loss-scaler object may be what a parameter holds
        # a module whose forward takes part in a step (a MAML learner's meta update): who
        # builds one may call it
        forwards = {
            c.name: id(c.methods["forward"])
            for c in self.ctx.classes.values()
            if "forward" in c.methods
        }
        self.ctx.relevant = relevant_functions(
            mentions, calls, enclosing, by_name, external, forwards
        )
        # a counter's residues are followed across iterations only for the guards of what may
        # take part in a step (an evaluation every 250 steps opens no accumulation window)
        moving = {n for n, keys in by_name.items() if any(k in self.ctx.relevant for k in keys)}
        moving |= external
        for modulus, stmt in self.modular_ifs:
            if names_move(stmt, moving):
                self.moduli_counts[modulus] = self.moduli_counts.get(modulus, 0) + 1
        self.ctx.tracked_moduli = {m for m, n in self.moduli_counts.items() if n > 1}

    def _condition(self, test: cst.BaseExpression, stmt: cst.If | None = None) -> None:
        """Count a condition's tests (``stmt``: the ``if`` it decides, if any)."""
        inner = without_not(test)[0]
        if type(inner) is cst.BooleanOperation:  # each operand is decided on its own
            self._condition(inner.left, stmt)
            self._condition(inner.right, stmt)
        sign = counter_sign(test)
        if sign is not None:
            self.ctx.sign_tested |= sign[2]
        guard = modular(self.ctx.code, test, self.ctx.cycles)
        if guard is not None and stmt is not None:
            self.modular_ifs.append((modulus_of(guard[0]), stmt))  # counted once relevance is known
        elif guard is not None:
            modulus = modulus_of(guard[0])
            self.moduli_counts[modulus] = self.moduli_counts.get(modulus, 0) + 1
        text = condition_key(self.ctx.code, test)[0]
        if text is not None:
            self.condition_counts[text] = self.condition_counts.get(text, 0) + 1
            if self.condition_counts[text] == 1:
                self.ctx.fact_names[text] = chains_in(test)

    def _external(self, calls: dict[int, set[str]]) -> set[str]:
        """Names imported from other linted files that take part in a training step (one import
        away: a file indexed for another's sake does not look further)."""
        if self.ctx.project is None or self.ctx.project.loading > 1:
            return set()
        called = set().union(*calls.values()) if calls else set()
        out: set[str] = set()
        for local, qual in self.ctx.imports.aliases.items():
            if local not in called and local not in self.ctx.referenced:
                continue
            if self.ctx.project.takes_part(self.ctx, qual):
                out.add(local)
                if stubs.locate(qual) is not None:
                    out.add("__call__")  # a library's loss scaler: what a parameter may hold
        for local, name in self.module_calls:
            # ``from . import steps`` then ``steps.train_step(...)``: a function of a linted
            # module, called by its own name
            qual = self.ctx.imports.aliases.get(local)
            if qual is not None and self.ctx.project.takes_part(self.ctx, f"{qual}.{name}"):
                out.add(name)
        return out

    def _class(self, node: cst.ClassDef) -> None:
        bases = [self.ctx.imports.qualify(a.value) or "" for a in node.bases]
        methods: dict[str, cst.FunctionDef] = {}
        class_values: dict[str, cst.BaseExpression] = {}
        for stmt in node.body.body:
            if type(stmt) is cst.FunctionDef:
                methods[stmt.name.value] = stmt
            elif type(stmt) is cst.SimpleStatementLine:
                for small in stmt.body:
                    if type(small) in (cst.Assign, cst.AnnAssign) and small.value is not None:
                        targets = (
                            [t.target for t in small.targets]
                            if type(small) is cst.Assign
                            else [small.target]
                        )
                        for target in targets:
                            if type(target) is cst.Name:
                                class_values[target.value] = small.value
        attrs: dict[str, list[tuple[cst.BaseExpression, cst.FunctionDef]]] = {}
        items: dict[str, list[tuple[object, cst.BaseExpression, cst.FunctionDef]]] = {}
        for method in methods.values():
            for target, value in assignments(method.body):
                held = self_attribute(target.value) if type(target) is cst.Subscript else None
                if held is not None:
                    label = literal_index(target)  # type: ignore[arg-type]
                    items.setdefault(held, []).append((label, value, method))
                name = self_attribute(target)
                if name is not None:
                    attrs.setdefault(name, []).append((value, method))
        self.ctx.classes[node.name.value] = ClassInfo(
            node.name.value, node, self.ctx, bases, methods, attrs, class_values, items
        )


def _nested_classes(node: cst.ClassDef) -> list[cst.ClassDef]:
    """The classes defined in a class's body, at any depth of classes; not those of a test
    container (``class DistributedTest: class _DistTestBase:``, a base of test cases that a
    test framework parametrises and runs elsewhere), left out as before they were indexed."""
    if is_test_class(node.name.value):
        return []
    found = []
    for stmt in node.body.body:
        if type(stmt) is cst.ClassDef:
            found.append(stmt)
            found.extend(_nested_classes(stmt))
    return found


def _function_info(ctx: FileContext, func: cst.FunctionDef | None) -> FunctionInfo:
    body = func.body if func is not None else ctx.module
    info = FunctionInfo({}, {}, {}, {}, {})
    for target, value in assignments(body):
        if type(target) is cst.Name:
            info.local_values.setdefault(target.value, []).append(value)
        elif type(target) is cst.Subscript and type(target.value) is cst.Name:
            info.item_values.setdefault(target.value.value, []).append(
                (literal_index(target), value)
            )
        elif type(target) in (cst.Tuple, cst.List):
            for i, el in enumerate(target.elements):
                if type(el) is cst.StarredElement:
                    break  # ``a, *rest, loss = f()``: the places after it are not fixed
                if type(el.value) is cst.Name:
                    info.tuple_values.setdefault(el.value.value, []).append((i, value))
    stack: list[cst.CSTNode] = [body]
    while stack:
        node = stack.pop()
        if type(node) in (cst.FunctionDef, cst.ClassDef, cst.Lambda) and node is not func:
            continue
        if type(node) is cst.For and type(node.target) is cst.Name:
            info.loop_targets.setdefault(node.target.value, node.iter)
        elif type(node) is cst.For:
            # ``for opt, sched in zip(optimizers, schedulers)``: each name walks its iterable
            for name, iterable in zipped_targets(node):
                info.loop_targets.setdefault(name, iterable)
        if not is_expression(node):
            stack.extend(kids(node))
    # the functions it defines (at module level too: a closure defined in the loop of an
    # ``if __name__ == "__main__":`` block, handed to ``optimizer.step(closure)``)
    for node in nested_defs(body):
        info.local_defs.setdefault(node.name.value, node)
    if func is not None:
        for p in all_params(func):
            ann = None
            if p.annotation is not None:
                ann = ctx.imports.qualify(p.annotation.annotation)
            info.params[p.name.value] = ann
    return info
