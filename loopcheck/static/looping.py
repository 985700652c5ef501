"""Loops in the path interpreter: a loop runs its body to a fixed point over the back edge,
telling each optimizer's protocol where a loop starts and where an iteration ends, keeping
the facts of counters that grow by one and forgetting those of names the loop assigns."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import libcst as cst

from loopcheck.protocol import Event, Move, advance
from loopcheck.static import conditions, guards, tensors
from loopcheck.static.callees import may_clear, names_a_move
from loopcheck.static.counters import counter_of
from loopcheck.static.facts import flags_in, handed_back_in, init_flags
from loopcheck.static.frames import FrameStack
from loopcheck.static.model import FileModel, LoopSummary, RootSummary
from loopcheck.static.moves import Emit
from loopcheck.static.paths import Flow, PathState, cap
from loopcheck.static.roles import Role, role_from_name
from loopcheck.static.syntax import all_params, chains_in, is_true, literal
from loopcheck.static.tree import walk

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from loopcheck.static.actions import Reader
    from loopcheck.static.moves import Action, Evaluations

MAX_LOOP_ROUNDS = 6
_GATE_PREFIX = "<"  # facts about framework gates: decided anew every iteration


class Loops(FrameStack):
    """The part of the interpreter that runs loops; statements and calls live in
    ``Interpreter``."""

    model: FileModel
    root: RootSummary | None
    loop_stack: list[LoopSummary]
    summaries: dict[int, LoopSummary]
    fact_names: conditions.FactNames
    _forgotten: dict
    touched: dict[tuple[str, frozenset[str]], bool]
    reader: Reader

    def exec_stmt(self, stmt: cst.CSTNode, states: set[PathState]) -> Flow:
        raise NotImplementedError

    def run_actions(self, actions: Sequence[Action], states: set[PathState]) -> set[PathState]:
        raise NotImplementedError

    def carry_eval_mode(self, state: PathState, summary: LoopSummary) -> PathState:
        raise NotImplementedError

    def apply(self, state: PathState, key: str, event: Event) -> PathState:
        raise NotImplementedError

    def exec_loop(self, stmt: cst.For | cst.While, states: set[PathState]) -> Flow:
        if type(stmt) is cst.For:
            clears = self.reader.apis.clears_all_grads(stmt)
            if clears is not None:
                self.summary(stmt)
                return Flow(normal=self.run_actions(clears, states))
        if type(stmt) is cst.For and (
            self.over_optimizers(stmt) or _over_parameters(stmt) or self.runs_once(stmt)
        ):
            # ``for opt in optimizers: opt.zero_grad()``: one move on each, not a training loop
            # (nor ``for p in model.parameters(): p.data.add_(p.grad, alpha=-lr)``: one update,
            # nor ``for _ in range(GRADIENT_ACCUMULATE_EVERY)`` with that constant set to 1)
            states = self.run_actions(self.reader.of_expr(stmt.iter), states)
            flow = self.exec_stmt(stmt.body, states)
            return Flow(normal=flow.normal | flow.continues | flow.breaks, returns=flow.returns)
        head = stmt.iter if type(stmt) is cst.For else stmt.test
        states = self.run_actions(self.reader.of_expr(head), states)
        assigned = chains_in(stmt.target) if type(stmt) is cst.For else set()
        infinite = type(stmt) is cst.While and is_true(stmt.test)
        if infinite and _retries(stmt):
            # ``while True: try: <step> except OOM: ...; continue`` then ``return``: the same
            # batch tried again after an error, not the next iteration
            flow = self.exec_stmt(stmt.body, states)
            return Flow(normal=flow.normal | flow.continues | flow.breaks, returns=flow.returns)
        orelse = stmt.orelse.body if stmt.orelse is not None else None
        return self.run_loop(stmt, stmt.body, states, assigned, counter_of(stmt), orelse, infinite)

    def over_optimizers(self, stmt: cst.For) -> bool:
        """``for opt in optimizers:``: a container of optimizers, or a loop variable named as
        one (each iteration another optimizer, not one optimizer's iterations)."""
        if type(stmt.target) is not cst.Name:
            return False
        element = self.frame.element_role(stmt.iter)
        if element is not None:
            return element.role is Role.OPTIMIZER
        return role_from_name(stmt.target.value) is Role.OPTIMIZER

    def runs_once(self, stmt: cst.For) -> bool:
        """``for _ in range(1)``, or over ``range(N)`` with every assignment of ``N`` the
        literal 1 (a module constant nobody raised): one pass, no accumulation."""
        it = stmt.iter
        if not (
            type(it) is cst.Call
            and type(it.func) is cst.Name
            and it.func.value == "range"
            and len(it.args) == 1
        ):
            return False
        count = it.args[0].value
        if type(count) is cst.Integer:
            return count.value == "1"
        if type(count) is not cst.Name:
            return False
        frame = self.frame
        while frame is not None and count.value not in frame.local_values:
            if count.value in frame.params or count.value in frame.tuple_values:
                return False
            frame = frame.parent
        if frame is None:
            return False
        values = frame.local_values.get(count.value, ())
        if not values or not all(type(v) is cst.Integer and v.value == "1" for v in values):
            return False
        body = frame.func.body if frame.func is not None else frame.ctx.module
        return not any(
            type(node) is cst.AugAssign
            and type(node.target) is cst.Name
            and node.target.value == count.value
            for node in walk(body)
        )

    def summary(self, node: cst.CSTNode) -> LoopSummary:
        summary = self.summaries.get(id(node))
        if summary is None:
            parent = self.loop_stack[-1] if self.loop_stack else None
            summary = LoopSummary(node, self.ctx.site(node), parent, self.root)
            summary.eval_like = (
                tensors.evaluates(self.ctx, self.frame.func)
                or tensors.over_held_out_data(self.ctx, self.frame.func, node)
            ) and not tensors.switches_gradients(self.ctx, self.frame.func)
            self.summaries[id(node)] = summary
            self.model.loops.append(summary)
        return summary

    def run_framework_loop(
        self,
        func: cst.FunctionDef,
        states: set[PathState],
        counter: str | None,
        caller_clears: bool,
    ) -> None:
        """Run a function's body as the body of a loop its framework runs (a Lightning
        ``training_step``, a handed or returned step); ``caller_clears``: a step a factory
        returns, whose caller clears before each call (a deliberate clear opens each
        iteration)."""
        block = func.body
        run_body = None
        if caller_clears:
            clear = [Emit(Event(Move.ZERO, None, deliberate=True), None)]

            def run_body(entry: set[PathState]) -> Flow:
                return self.exec_stmt(block, self.run_actions(clear, entry))

        # its framework hands it new arguments on every call (ignite's ``engine``, whose
        # ``engine.state.iteration`` counts the calls): what a path knew of them is forgotten
        # (not a setting with a literal default, ``dry_run: bool = False``: the same every call)
        fresh = {
            p.name.value for p in all_params(func) if p.default is None or not literal(p.default)[0]
        } - {"self", "cls"}
        cls = self.frame.cls
        init = cls.method("__init__") if cls is not None else None
        for text, truth in init_flags(init[1] if init is not None else None):
            # ``self._updated = False`` in ``__init__``: what the first call finds
            self.fact_names.setdefault(text, {text})
            states = {s.with_fact(text, truth) for s in states}
        self.run_loop(func, block, states, fresh, counter, None, False, True, run_body)

    def run_loop(
        self,
        node: cst.CSTNode,
        body: cst.CSTNode,
        states: set[PathState],
        assigned: set[str],
        counter: str | None,
        orelse: cst.BaseSuite | None,
        infinite: bool,
        framework: bool = False,
        run_body: Callable[[set[PathState]], Flow] | None = None,
    ) -> Flow:
        """Run a loop's ``body`` (or ``run_body``, what one iteration does when it is no
        block of statements) to a fixed point over the back edge."""
        summary = self.summary(node)
        if self.root is not None and self.root.grads_written:
            # gradients written by hand before the loop (``p.grad = torch.rand_like(p)``): its
            # steps apply them, no backward needed
            summary.grads_read = True
        if states and not summary.eval_like and all(s.evaluating for s in states):
            # entered with a model in eval mode on every path: an evaluation loop (LC502),
            # unless its code turns gradients off by other means, or is a unit test
            func = self.frame.func
            summary.eval_like = not tensors.switches_gradients(self.ctx, func) and not (
                (func is not None and func.name.value.startswith("test"))
                or tensors.unit_test(self.ctx, func)
            )
            if summary.eval_like:
                summary.eval_models = frozenset(e[0] for s in states for e in s.evaluating)
                summary.eval_model_ran = _mentions_any(node, summary.eval_models)
        # Counters that grow by one per iteration keep their modular facts across the back
        # edge, shifted: ``(i + 1) % N != 0`` now is ``i % N != 0`` next iteration.
        counters = frozenset(
            (self.ctx.incremented(body) if run_body is None else set())
            | ({counter} if counter else set())
        )
        forgotten = frozenset(assigned | self.ctx.loop_assigned(node)) - handed_back_in(
            self.ctx, node
        )
        # flags set to literals only (``updated = True`` after the step): each path still
        # knows the value it set last
        forgotten -= flags_in(self.ctx, node)
        assigned = frozenset(assigned)
        self.loop_stack.append(summary)
        try:
            # the optimizers cleared last before the loop (a setup helper's clear) say
            # nothing of the loop's backward, as at the back edge
            entry = {
                self.forget(self.enter(s, node), assigned).with_zeroed(frozenset()) for s in states
            }
            # framework gates decided before the loop (a helper loop inside an
            # ``if accelerator.sync_gradients:`` block) hold for all its iterations
            outer_gates = frozenset(
                f for s in entry for f in s.facts if f[0].startswith(_GATE_PREFIX)
            )
            start = guards.loop_start(node) if counter else None
            if start is not None and counter in self.ctx.sign_tested:
                # ``for i, x in enumerate(...)``: i == 0 the first time (a fact only for a
                # counter whose sign some condition tests: each such fact doubles the paths)
                key = conditions.positive_key(counter)  # type: ignore[arg-type]
                self.fact_names.setdefault(key, {counter})  # type: ignore[arg-type]
                entry = {s.with_fact(key, start > 0) for s in entry}
            seen = set(entry)
            after_body: set[PathState] = set()  # loops are assumed to run at least once
            breaks: set[PathState] = set()
            returns: set[PathState] = set()
            for _ in range(MAX_LOOP_ROUNDS):
                flow = self.exec_stmt(body, entry) if run_body is None else run_body(entry)
                breaks |= flow.breaks
                if framework:
                    # a framework's loop calls the body again after it returns
                    flow.continues |= flow.returns
                else:
                    returns |= flow.returns
                back = {
                    self.forget(
                        self.shift(self.iterate(s, summary, outer_gates), counter),
                        forgotten,
                        counters,
                    )
                    for s in flow.normal | flow.continues
                }
                after_body |= back
                new = back - seen
                if not new:
                    break
                seen |= new
                entry = cap(new)
        finally:
            self.loop_stack.pop()
        exit_states = set() if infinite else after_body
        if orelse is not None and exit_states:
            exit_states = self.exec_stmt(orelse, exit_states).normal
        return Flow(normal=cap(exit_states | breaks), returns=returns)

    def evaluations(self, action: Evaluations, states: set[PathState]) -> set[PathState]:
        """``lbfgs.step(closure)``: the optimizer evaluates the closure and updates, again and
        again, in one call; a loop at the call whose iterations are those evaluations."""

        def evaluate(entry: set[PathState]) -> Flow:
            return Flow(normal=self.run_actions([action.closure, *action.update], entry))

        self.summary(action.call).closure_evaluations = True
        flow = self.run_loop(
            action.call, action.call, states, set(), None, None, False, run_body=evaluate
        )
        return flow.normal

    def forget(
        self, state: PathState, names: frozenset[str], keep: frozenset[str] = frozenset()
    ) -> PathState:
        if not names or not state.facts or not self.fact_names.may_touch(names):
            return state
        memo = (state.facts, names, keep)
        facts = self._forgotten.get(memo)
        if facts is None:
            facts = conditions.forget(state.facts, names, self.fact_names, keep, self.touched)
            self._forgotten[memo] = facts
        return state.with_facts(facts)

    def names_changed(self) -> None:
        """A fact now mentions more names: what assignments forget is decided anew."""
        self._forgotten.clear()
        self.touched.clear()

    def enter(self, state: PathState, loop: cst.CSTNode) -> PathState:
        """A loop starts: tell every optimizer's protocol state. A loop that cannot clear
        (see :meth:`may_clear`) does not take over the gradients it finds; one that neither
        clears nor names a backward or a step changes nothing: a scheduler stepped before it
        is still between two micro-batches (torchtitan's loop moving each micro-batch to the
        device)."""
        if not state.opts:
            return state
        clears = self.may_clear(loop)
        if not clears and not names_a_move(self.ctx, loop):
            return state
        for key, opt_state in state.opts:
            new, _ = advance(opt_state, Event(Move.LOOP_ENTRY))
            if new.consumed != opt_state.consumed and not clears:
                new = replace(new, consumed=opt_state.consumed)
            if new != opt_state:
                state = state.with_opt(key, new)
        return state

    def may_clear(self, loop: cst.CSTNode) -> bool:
        """Whether a loop may clear the gradients it inherits (a clear in its text, or a call
        to a function of the linted files that takes part in a step). Only such a loop takes
        them over: a clear of gradients left by an earlier loop is then not a micro-batch lost
        (LC205's question, not LC108's). A loop that cannot clear (a MAML adaptation loop
        inside a helper) leaves its caller's gradients as they were."""
        return may_clear(self.frame, loop, self.reader.callee)

    def shift(self, state: PathState, counter: str | None) -> PathState:
        """The counter grew by one: move its modular facts one step."""
        if counter is None or not state.facts:
            return state
        positive = counter in self.ctx.sign_tested
        return state.with_facts(conditions.shifted(state.facts, counter, self.fact_names, positive))

    def iterate(
        self, state: PathState, summary: LoopSummary, outer_gates: frozenset = frozenset()
    ) -> PathState:
        """The back edge: a new iteration for the optimizers this loop steps. Which optimizers
        were cleared last says nothing about the next iteration's backward, and framework gates
        are decided anew."""
        facts = state.facts
        if any(text.startswith(_GATE_PREFIX) for text, _ in facts):
            facts = frozenset(
                f for f in facts if not f[0].startswith(_GATE_PREFIX) or f in outer_gates
            )
        state = self.carry_eval_mode(state.with_facts(facts).with_zeroed(frozenset()), summary)
        for key, _ in state.opts:
            if summary.has(Move.STEP, key):
                state = self.apply(state, key, Event(Move.ITERATION))  # may complete LC303
        return state


def _over_parameters(stmt: cst.For) -> bool:
    """``for p in model.parameters():``, ``for n, p in model.named_parameters():``: each
    iteration another parameter of one update, not another step."""
    it = stmt.iter
    return (
        type(it) is cst.Call
        and type(it.func) is cst.Attribute
        and it.func.attr.value in ("parameters", "named_parameters")
    )


def _retries(loop: cst.While) -> bool:
    """A retry loop: its body tries something (a ``try`` among its statements) and ends by
    leaving the loop (``return`` or ``break``), so it goes round again only by ``continue``."""
    body = loop.body
    if type(body) is not cst.IndentedBlock or not body.body:
        return False
    last = body.body[-1]
    ends = type(last) is cst.SimpleStatementLine and type(last.body[-1]) in (cst.Return, cst.Break)
    return ends and any(type(stmt) in (cst.Try, cst.TryStar) for stmt in body.body)


def _mentions_any(loop: cst.CSTNode, keys: frozenset[str]) -> bool:
    """Whether a loop's text names one of these models (``model`` for ``train:model``,
    ``self.transform`` for ``TransformedEnv.transform``): it runs or hands on a model that
    was in eval mode when it started."""
    chains = chains_in(loop)
    for key in keys:
        name = key.rpartition(":")[2]
        owner, dot, attr = name.partition(".")
        if name in chains or (dot and f"self.{attr}" in chains):
            return True
    return False
