"""The path interpreter: runs code abstractly as sets of protocol states, one per path, and
records what the protocol says about every path into the file model.

Statements are interpreted structurally: ``if`` runs both branches (unless the same condition
was already decided on this path), loops iterate to a fixed point with their back edge,
``break``/``continue``/``return`` leave through their own exits, ``try`` handlers start from any
point of the body. Calls into the linted files are followed with their arguments bound; what
each call does is the reader's business (:mod:`loopcheck.static.actions`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import libcst as cst

from loopcheck.protocol import Event, Move
from loopcheck.static import conditions, guards
from loopcheck.static.actions import Reader
from loopcheck.static.branching import Branches
from loopcheck.static.callees import steps_in_hooks
from loopcheck.static.checks import Checks
from loopcheck.static.facts import flag_set, handed_back, mode_saved, requires_grad_test, runs_text
from loopcheck.static.frames import Frame, module_frame
from loopcheck.static.index import FileContext
from loopcheck.static.looping import Loops
from loopcheck.static.model import FileModel, LoopSummary, RootSummary, Site
from loopcheck.static.moves import (
    Action,
    Alternatives,
    Backward,
    Emit,
    Evaluations,
    Follow,
    Forward,
    Mark,
    Mode,
)
from loopcheck.static.paths import Flow, PathState, cap, forget_locals, join_complements, merge
from loopcheck.static.recording import Recorder
from loopcheck.static.roles import Obj, Role, constructed_role
from loopcheck.static.syntax import (
    decorators,
    ends_with_continue,
    grad_context,
    is_increment,
    is_loss_name,
    literal,
    turns_grad_off,
)

MAX_FOLLOW_DEPTH = 6
_PRESENT = object()  # the value of a parameter known to hold an optimizer, scaler, model...
# statements a finding may be placed at (``self.at``)
_STATEMENT_KINDS = frozenset(
    {
        cst.SimpleStatementLine,
        cst.SimpleStatementSuite,
        cst.If,
        cst.For,
        cst.While,
        cst.With,
        cst.Try,
        cst.TryStar,
        cst.Match,
    }
)


def _enters_no_grad(body: cst.BaseSuite) -> bool:
    """A with-body whose first statements enter a no-grad context on an ExitStack."""
    if type(body) is not cst.IndentedBlock:
        return False
    for stmt in body.body:
        if type(stmt) is not cst.SimpleStatementLine:
            continue
        for small in stmt.body:
            if (
                type(small) is cst.Expr
                and type(small.value) is cst.Call
                and type(small.value.func) is cst.Attribute
                and small.value.func.attr.value == "enter_context"
                and small.value.args
                and grad_context(small.value.args[0].value) is False
            ):
                return True
    return False


class Interpreter(Recorder, Checks, Loops, Branches):
    """Walks statements over sets of path states (see the module docstring)."""

    def __init__(self, model: FileModel) -> None:
        self.model = model
        self.reader = Reader(self)
        self.loop_stack: list[LoopSummary] = []
        self.follow_stack: list[cst.CSTNode] = []
        self.frames: list[Frame] = []
        self.callee_frames: dict[tuple[object, ...], Frame] = {}  # see ``callee_frame``
        self.gates: list[str] = []
        self.root: RootSummary | None = None
        self.summaries: dict[int, LoopSummary] = {}
        self.follows = 0  # calls followed in this root's analysis
        self.discarding = 0  # inside a block that drops the batch (except, ``...; continue``)
        self.probing = 0  # inside a block that probes the model (``assert p.grad is None``)
        self.on_residue = 0  # inside a branch taken on one residue of a counter (every n-th)
        self.fact_names = conditions.FactNames()
        self.saved_modes: dict[str, str] = {}
        self._seeded: set[int] = set()
        self.registry: dict[str, Obj] = {}  # optimizers seen, by key
        self.at: cst.CSTNode | None = None  # the statement being run (for reaching values)
        self._forgotten: dict[tuple[object, ...], frozenset[tuple[str, bool]]] = {}
        self.touched = {}  # whether an assignment touches a fact, per fact text and names
        self.transitions = {}  # the protocol's transitions seen in this file, remembered
        self.invariants = {}  # the loop-invariant part of a path's facts, per loop
        self.adjacent_steps = set()
        # the function each step ran in (does it drop a loss? asked only for LC104)
        self.step_functions: dict[Site, tuple[FileContext, cst.FunctionDef | None]] = {}
        self.applied: dict[Site, set[str]] = {}
        self.grad_modes: list[bool] = []
        self.no_grad_blocks: list[cst.CSTNode] = []

    @property
    def gate(self) -> str | None:
        return self.gates[-1] if self.gates else None

    # entry points

    def run_root(
        self,
        frame: Frame,
        body: Sequence[cst.BaseStatement],
        root: RootSummary,
        implicit_loop: cst.FunctionDef | None = None,
        counter: str | None = None,
        caller_clears: bool = False,
    ) -> None:
        """Run one entry point. With ``implicit_loop``, the body is the body of a loop that
        a framework runs (``counter`` grows by one per iteration); ``caller_clears``: a step
        function a factory returns, whose caller clears the gradients before each call
        (open_clip keeps ``zero_grad`` out of its compiled step)."""
        self.frames = [frame]
        self.callee_frames = {}
        self._seed(frame.ctx)
        self.root = root
        self.loop_stack = []
        self.gates = []
        self.grad_modes, self.no_grad_blocks = [], []
        self.enter_function(frame.func)
        self.follow_stack = [frame.func] if frame.func is not None else []
        self.follows = 0
        states = {PathState()}
        self.at = None
        if implicit_loop is None:
            self.exec_block(body, states)
            return
        self.run_framework_loop(implicit_loop, states, counter, caller_clears)

    def _seed(self, ctx: FileContext) -> None:
        if id(ctx) not in self._seeded:
            self._seeded.add(id(ctx))
            for text, names in ctx.fact_names.items():
                self.fact_names.setdefault(text, names)

    # blocks

    def exec_block(self, body: Sequence[cst.CSTNode], states: set[PathState]) -> Flow:
        probe = bool(body) and self.reader.probes(body)
        if body and (ends_with_continue(body[-1]) or probe):
            # ``zero_grad(); continue`` drops the batch on purpose: no step was meant to follow;
            # a block that asserts the gradients are None around a backward probes the model
            # (its clear cancels the probe only: it is no clear of the loop's gradients).
            self.discarding += 1
            self.probing += probe
            try:
                return self._exec_block(body, states)
            finally:
                self.discarding -= 1
                self.probing -= probe
        return self._exec_block(body, states)

    def _exec_block(self, body: Sequence[cst.CSTNode], states: set[PathState]) -> Flow:
        flow = Flow(normal=set(states))
        for stmt in body:
            if not flow.normal:
                break
            inner = self.exec_stmt(stmt, flow.normal)
            flow.normal = cap(inner.normal)
            flow.breaks |= inner.breaks
            flow.continues |= inner.continues
            flow.returns |= inner.returns
        return flow

    def exec_stmt(self, stmt: cst.CSTNode, states: set[PathState]) -> Flow:
        kind = type(stmt)
        if kind in _STATEMENT_KINDS:
            self.at = stmt
        run = _RUNS.get(kind)
        return run(self, stmt, states) if run is not None else Flow(normal=states)

    def _exec_return(self, stmt: cst.Return, states: set[PathState]) -> Flow:
        if stmt.value is not None:
            states = self.run_actions(self.reader.of_expr(stmt.value), states)
        return Flow(returns=states)

    def _exec_assert(self, stmt: cst.Assert, states: set[PathState]) -> Flow:
        if literal(stmt.test) in ((True, False), (True, None)):
            return Flow()  # ``assert False``: this path ends here, as at a ``raise``
        return Flow(normal=self.run_actions(self.reader.of_assert(stmt.test), states))

    def _exec_expr(self, stmt: cst.Expr, states: set[PathState]) -> Flow:
        self.check_kept_graph(stmt)
        states = self.run_actions(self.reader.of_expr(stmt.value), states)
        if self.exits(stmt.value):
            return Flow()  # ``sys.exit(0)``: the program ends here, like a raise
        if runs_text(stmt.value) and self.fact_names:
            # ``exec(open('configurator.py').read())``: any setting may be overridden
            names = frozenset().union(*self.fact_names.values())
            states = {self.forget(s, names) for s in states}
        return Flow(normal=states)

    def exits(self, value: cst.BaseExpression) -> bool:
        """A call that ends the program: ``sys.exit()``, ``exit()``, ``quit()``, ``os._exit()``."""
        if type(value) is not cst.Call or type(value.func) not in (cst.Name, cst.Attribute):
            return False
        qual = self.ctx.imports.qualify(value.func)
        if qual is None and type(value.func) is cst.Name:
            qual = value.func.value
        return qual in {"sys.exit", "exit", "quit", "os._exit"}

    def exec_with(self, stmt: cst.With, states: set[PathState]) -> Flow:
        pushed = modes = 0
        for item in stmt.items:
            states = self.run_actions(self.reader.of_expr(item.item), states)
            gate = self.gate_of_context(item.item)
            if gate is not None:
                self.gates.append(gate)
                pushed += 1
            enabled = grad_context(item.item)
            if enabled is not None:
                self.grad_modes.append(enabled)
                modes += 1
        if _enters_no_grad(stmt.body):
            # ``with ExitStack() as stack: stack.enter_context(torch.no_grad())``
            self.grad_modes.append(False)
            modes += 1
        blocks = len(self.no_grad_blocks)
        if modes and not self.grad_enabled:
            self.no_grad_blocks.append(stmt)
        try:
            return self.exec_stmt(stmt.body, states)
        finally:
            del self.gates[len(self.gates) - pushed :]
            del self.grad_modes[len(self.grad_modes) - modes :]
            del self.no_grad_blocks[blocks:]

    def enter_function(self, func: cst.FunctionDef | None) -> int:
        """A function decorated with ``@torch.no_grad()`` or ``@torch.inference_mode()`` runs
        with gradients off; the number of modes pushed (for the caller to pop)."""
        if func is None:
            return 0
        for name in decorators(func):
            last = name.rsplit(".", 1)[-1]
            if turns_grad_off(last):
                self.grad_modes.append(False)
                self.no_grad_blocks.append(func)
                return 1
            if last == "enable_grad":
                self.grad_modes.append(True)
                return 1
        return 0

    def exec_match(self, stmt: cst.Match, states: set[PathState]) -> Flow:
        flow = Flow()
        for case in stmt.cases:
            flow = merge(flow, self.exec_stmt(case.body, states))
        catch_all = any(
            type(c.pattern) is cst.MatchAs and c.pattern.pattern is None for c in stmt.cases
        )
        if not catch_all:
            flow.normal |= states
        return flow

    def exec_if(self, stmt: cst.If, states: set[PathState]) -> Flow:
        states = self.run_actions(self.reader.of_expr(stmt.test), states)
        if self.reader.reads_gradients(stmt.test):
            # ``if torch.isfinite(norm): opt.step()``: the skipped gradients are dropped on
            # purpose by the next clear
            states = self.run_actions([Emit(Event(Move.GRAD_ACCESS), None)], states)
        self.check_step_guard(stmt, states)
        if guards.flushes(stmt.test) and guards.steps_in(self.frame, stmt.body):
            self.mark("flush")  # ``or step + 1 == len(loader)``: the last window is stepped
        # a parameter bound to a real object is not None (``if scaler is not None:``)
        present = {
            k: _PRESENT
            for k, v in self.frame.bound.items()
            if v is not None and k not in self.frame.maybe_none
        }
        decided = conditions.truth(stmt.test, {**present, **self.frame.constants})
        if decided is None:
            decided = requires_grad_test(stmt.test, self.grad_enabled)
        if decided is not None:
            branch: cst.CSTNode | None = stmt.body
            if not decided:
                branch = stmt.orelse.body if type(stmt.orelse) is cst.Else else stmt.orelse
            return self.exec_stmt(branch, states) if branch is not None else Flow(normal=states)
        stage = self.unscale_stage(stmt)
        if stage is not None:
            # ``if state["stage"] is not OptState.UNSCALED: scaler.unscale_(opt)``: each path
            # knows whether it has unscaled since the last update
            keys, when_unscaled = stage
            taken = {
                s
                for s in states
                if all(s.get(k).unscaled_since_update for k in keys) == when_unscaled
            }
            skipped = states - taken
        else:
            taken, skipped = self.split(stmt.test, states)
        taken, skipped = self.engine_side(guards.deepspeed_side(stmt.test), taken, skipped)
        guard = self.ctx.remember(
            "guard", stmt, lambda: guards.read_guard(self.ctx.code, stmt.test)
        )
        flow = self.exec_branch(stmt.body, taken, guard is not None and guard.zero)
        dropped = self.none_matched_dropped(stmt)  # (a chain's head notes where it ends)
        if stmt.orelse is None:
            flow.normal |= set() if dropped else skipped
        else:
            other = stmt.orelse.body if type(stmt.orelse) is cst.Else else stmt.orelse
            flow = merge(
                flow, self.exec_branch(other, skipped, guard is not None and not guard.zero)
            )
        flow.normal = join_complements(flow.normal)
        return flow

    def exec_branch(self, branch: cst.CSTNode, states: set[PathState], on_residue: bool) -> Flow:
        """One branch of an ``if``; ``on_residue``: taken on one residue of a counter only."""
        if not states:
            return Flow()
        self.on_residue += on_residue
        try:
            return self.exec_stmt(branch, states)
        finally:
            self.on_residue -= on_residue

    def exec_try(self, stmt: cst.Try | cst.TryStar, states: set[PathState]) -> Flow:
        body = self.exec_stmt(stmt.body, states)
        # A handler may start anywhere in the body: before it, or after it ran through.
        handler_entry = set(states) | body.normal
        flow = Flow(breaks=body.breaks, continues=body.continues, returns=body.returns)
        if stmt.orelse is not None:
            flow = merge(flow, self.exec_stmt(stmt.orelse.body, body.normal))
        else:
            flow.normal = set(body.normal)
        self.discarding += 1  # a clear in a handler drops the failed batch on purpose
        # a step that raised (``except OverflowError:`` around ``scaler.step``) skipped its
        # gradients: the next clear drops them on purpose, as after ``if isfinite(norm):``
        skipped = guards.steps_in(self.frame, stmt.body)
        try:
            for handler in stmt.handlers:
                handled = self.exec_stmt(handler.body, handler_entry)
                if skipped and handled.normal:
                    access = [Emit(Event(Move.GRAD_ACCESS), None)]
                    handled.normal = self.run_actions(access, handled.normal)
                flow = merge(flow, handled)
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

    # assignments

    def exec_assign(self, stmt: cst.CSTNode, states: set[PathState]) -> set[PathState]:
        self.check_kept_graph(stmt)
        reader = self.reader
        actions: list[Action] = []
        value = getattr(stmt, "value", None)
        if value is not None:
            actions.extend(reader.of_expr(value))
        targets: list[cst.BaseExpression] = []
        if type(stmt) is cst.Assign:
            targets = [t.target for t in stmt.targets]
        elif type(stmt) in (cst.AnnAssign, cst.AugAssign):
            targets = [stmt.target]
        operator = stmt.operator if type(stmt) is cst.AugAssign else None
        for target in targets:
            actions.extend(reader.of_target(target, value, operator))
        names = self.ctx.target_names(stmt, targets)
        if self.loop_stack and value is not None and type(stmt) in (cst.Assign, cst.AnnAssign):
            fresh = frozenset(self.ctx.loop_assigned(self.loop_stack[-1].node))
            actions.extend(reader.of_assignment(value, names, fresh))
        states = self.run_actions(actions, states)
        if type(value) is cst.Call and len(targets) == 1:
            for key in self.built_optimizers(value, targets[0]):
                states = {s.without_opt(key) for s in states}
        if type(value) is cst.Call and any(is_loss_name(n) for n in names):
            self.mark("loss")
        if type(stmt) is cst.AugAssign and is_increment(stmt):
            counter = stmt.target.value  # type: ignore[union-attr]
            states = {self.shift(s, counter) for s in states}
            return {self.forget(s, names, frozenset((counter,))) for s in states}
        if names and type(stmt) is cst.Assign:
            names = names - handed_back(self.ctx, stmt)
        states = {self.forget(s, names) for s in states}
        flag = flag_set(stmt)
        if flag is not None:
            # ``cfg.use_fp16 = False``: a later ``if cfg.use_fp16:`` (here or in a function
            # called with ``cfg``) is decided, until the flag is assigned again
            text, truth = flag
            self.fact_names.setdefault(text, {text})
            states = {s.with_fact(text, truth) for s in states}
        saved = mode_saved(stmt)
        if saved is not None:
            states = self.save_mode(states, *saved)
        return states

    def built_optimizers(self, value: cst.Call, target: cst.BaseExpression) -> tuple[str, ...]:
        """``opt = torch.optim.Adam(...)``: the keys of an optimizer constructed here, whose
        protocol starts anew (a test function called twice builds a new one each time)."""
        func = value.func
        if type(func) is cst.Name:
            last = func.value
        elif type(func) is cst.Attribute:
            last = func.attr.value
        else:
            return ()
        if not last[:1].isupper():
            return ()  # a class (``torch.optim.Adam``), not ``self.optimizers()``
        qual = self.ctx.imports.qualify(func)
        if qual is None or constructed_role(qual) is not Role.OPTIMIZER:
            return ()
        held = self.frame.resolve(target)
        if held is None or held.role is not Role.OPTIMIZER or not held.models:
            return ()
        # gradients live on the parameters: only a model built anew here too (in this call,
        # and in this iteration of the innermost loop) has none left from before
        frame = self.frame
        loop = self.loop_stack[-1].node if self.loop_stack else None
        fresh = self.ctx.loop_assigned(loop) if loop is not None else None
        for model in held.models:
            scope, _, name = model.partition(":")
            name = name.split(".", 1)[0]
            if scope != frame.scope or name in frame.params or name not in frame.local_values:
                return ()
            if fresh is not None and name not in fresh:
                return ()
        return held.members or (held.key,)

    # running actions over states

    def run_actions(self, actions: Sequence[Action], states: set[PathState]) -> set[PathState]:
        for action in actions:
            if not states:
                break
            if isinstance(action, Emit):
                states = self.emit_all(states, action)
            elif isinstance(action, Backward) and action.probe:
                self.note_backward(action.site, states)
                self.trained_in_eval_mode(states, action)
            elif isinstance(action, Backward):
                self.note_backward(action.site, states)
                self.backward_under_no_grad(action, action.computed_without_grad)
                self.trained_in_eval_mode(states, action)
                states = {self.backward(s, action) for s in states}
                if steps_in_hooks(self.ctx, self.frame.func):
                    # optimizers stepped by gradient hooks during the backward (a fused
                    # backward pass): what the backward did to each optimizer is not seen
                    states = self.emit_all(states, Emit(Event(Move.OPAQUE), None))
            elif isinstance(action, Forward):
                states = self.forward(states, action)
            elif isinstance(action, Mode):
                for summary in self.loop_stack:
                    summary.sites.add(action.site)
                states = {self.mode(s, action) for s in states}
            elif isinstance(action, Follow):
                states = self.follow(action, states)
            elif isinstance(action, Alternatives):
                out: set[PathState] = set()
                for follow in action.follows:
                    out |= self.follow(follow, states)
                states = cap(out)
            elif isinstance(action, Mark):
                self.mark(action.what, states)
            elif isinstance(action, Evaluations):
                states = self.evaluations(action, states)
        return states

    def callee_frame(self, action: Follow, ctx: FileContext) -> Frame:
        """The frame of a followed function called from the current frame and statement. The
        same call followed again (a loop's next round, another path) gets the same frame
        back, with what it already resolved: a frame is a function of how it is called."""
        key = (action, id(self.frame), id(self.at) if action.tensors else None)
        frame = self.callee_frames.get(key)
        if frame is not None:
            return frame
        node = action.node
        assert type(node) is cst.FunctionDef
        nested = ctx is self.ctx and node in self.frame.local_defs.values()
        parent = self.frame if nested else module_frame(ctx)
        name = node.name.value
        scope = f"{action.cls.name}.{name}" if action.cls is not None else name
        if ctx is not self.frames[0].ctx:
            scope = f"{ctx.path}:{scope}"
        frame = Frame(ctx, node, action.cls, dict(action.bound), parent, scope)
        frame.constants = {k: v for k, v in action.constants if not frame.rebinds(k)}
        frame.maybe_none = action.maybe_none
        frame.divided, frame.handed_at = dict(action.divided), action.site
        frame.called_at = action.called_at
        if action.tensors:
            frame.handed = (self.frame, self.at, dict(action.tensors))
        frame.conditions = {
            name: (expr, ctx)
            for name, expr, ctx in action.conditions
            if name not in frame.local_values
        }
        self.callee_frames[key] = frame
        return frame

    def follow(self, action: Follow, states: set[PathState]) -> set[PathState]:
        node = action.node
        if node in self.follow_stack or len(self.follow_stack) >= MAX_FOLLOW_DEPTH:
            return states
        self.follows += 1
        if type(node) is cst.Lambda:
            self.follow_stack.append(node)
            try:
                return self.run_actions(self.reader.of_expr(node.body), states)
            finally:
                self.follow_stack.pop()
        ctx = action.ctx or self.ctx
        self._seed(ctx)
        frame = self.callee_frame(action, ctx)
        scope = frame.scope
        self.frames.append(frame)
        self.follow_stack.append(node)
        saved_gates, saved_at = self.gates, self.at
        saved_modes = (list(self.grad_modes), list(self.no_grad_blocks))
        self.gates = list(saved_gates)
        self.enter_function(node)
        try:
            flow = self.exec_stmt(node.body, states)
        finally:
            self.gates, self.at = saved_gates, saved_at
            self.grad_modes, self.no_grad_blocks = saved_modes
            self.follow_stack.pop()
            self.frames.pop()
        return cap({forget_locals(s, scope) for s in flow.normal | flow.returns})


def _run_block(interp: Interpreter, stmt: Any, states: set[PathState]) -> Flow:
    # a line, an indented block, or the one-line body of a compound statement
    return interp.exec_block(stmt.body, states)


def _run_assign(interp: Interpreter, stmt: Any, states: set[PathState]) -> Flow:
    return Flow(normal=interp.exec_assign(stmt, states))


def _unchanged(interp: Interpreter, stmt: Any, states: set[PathState]) -> Flow:
    return Flow(normal=states)  # a nested definition runs nothing here


# How each kind of statement runs (the statement's exact type: libcst's are never subclassed).
_RUNS: dict[type, Callable[[Interpreter, Any, set[PathState]], Flow]] = {
    cst.SimpleStatementLine: _run_block,
    cst.SimpleStatementSuite: _run_block,
    cst.IndentedBlock: _run_block,
    cst.If: Interpreter.exec_if,
    cst.For: Interpreter.exec_loop,
    cst.While: Interpreter.exec_loop,
    cst.With: Interpreter.exec_with,
    cst.Try: Interpreter.exec_try,
    cst.TryStar: Interpreter.exec_try,
    cst.Match: Interpreter.exec_match,
    cst.FunctionDef: _unchanged,
    cst.ClassDef: _unchanged,
    cst.Break: lambda interp, stmt, states: Flow(breaks=states),
    cst.Continue: lambda interp, stmt, states: Flow(continues=states),
    cst.Return: Interpreter._exec_return,
    cst.Raise: lambda interp, stmt, states: Flow(),
    cst.Assert: Interpreter._exec_assert,
    cst.Expr: Interpreter._exec_expr,
    cst.Assign: _run_assign,
    cst.AnnAssign: _run_assign,
    cst.AugAssign: _run_assign,
}
