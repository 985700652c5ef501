"""Calls into the functions and methods of the linted files: which ones are followed, with
their arguments bound (objects, literal constants, conditions, losses and their division),
and what a helper that mentions no move can still do with what it is handed."""

from __future__ import annotations

import libcst as cst

from loopcheck.protocol import Event, Move
from loopcheck.static.apis import ApiReader
from loopcheck.static.callees import (
    called_names,
    closure_names,
    constants_of,
    given_arguments,
    maybe_none_values,
    none_tested,
    own_params,
    passed_on,
    passes_parameters_on,
)
from loopcheck.static.classes import ClassInfo
from loopcheck.static.conditions import guard_flag
from loopcheck.static.division import divided
from loopcheck.static.index import FileContext
from loopcheck.static.moves import Action, Alternatives, Emit, Follow, Mark
from loopcheck.static.roles import Obj
from loopcheck.static.syntax import is_loss_name, params_of
from loopcheck.static.targets import Targets

MAX_FOLLOWS_PER_ROOT = 120  # past it, calls are treated as calls we cannot see into


class CallFollower(Targets):
    """Follows calls into the linted files' functions (the expression reader's half that
    binds arguments)."""

    apis: ApiReader

    def call_defined(
        self,
        callee: list[tuple[FileContext, cst.FunctionDef, ClassInfo | None, Obj | None]],
        call: cst.Call,
        positional: list[cst.BaseExpression],
        keywords: dict[str, cst.BaseExpression],
    ) -> list[Action]:
        """A call to functions defined in linted files (several: overrides in subclasses)."""
        relevant = [
            c for c in callee if id(c[1]) in c[0].relevant or self._calls_a_callable(c[1], call)
        ]
        if not relevant:
            if not any(passes_parameters_on(c[0], c[1]) for c in callee):
                # ``adjust_learning_rate(optimizer, ...)`` sets param_groups: no move at all
                return [Mark("forward")] if self.apis.opaque_args(call) else []
            return self.helper_without_moves(call, callee, positional, keywords)
        if self.host.follows >= MAX_FOLLOWS_PER_ROOT:
            return self.apis.opaque_args(call)
        follows = tuple(
            self.follow(ctx, node, cls, self_obj, call, positional, keywords)
            for ctx, node, cls, self_obj in relevant
        )
        actions: list[Action] = [follows[0] if len(follows) == 1 else Alternatives(follows)]
        if type(call.func) is cst.Name and self.is_closure(call.func.value):
            # a step closure called once more (for a metric): its gradients are not for a step
            actions.append(Emit(Event(Move.GRAD_ACCESS), None))
        return actions

    def _calls_a_callable(self, node: cst.FunctionDef, call: cst.Call) -> bool:
        """A helper that calls an object it is handed, when this call hands it an instance
        whose ``__call__`` takes part in a step (a loss scaler passed to ``train_one_epoch``)."""
        handed = set()
        params = [p.name.value for p in params_of(node)]
        positional = [a for a in call.args if a.keyword is None and not a.star]
        for name, arg in zip(params, positional, strict=False):
            handed.add((name, arg.value))
        for arg in call.args:
            if arg.keyword is not None:
                handed.add((arg.keyword.value, arg.value))
        called = called_names(node)
        for name, value in handed:
            if name not in called:
                continue
            obj = self.frame.resolve(value)
            method = obj.cls.method("__call__") if obj is not None and obj.cls else None
            if method is not None and id(method[1]) in method[0].ctx.relevant:
                return True
        return False

    def closure_follow(self, closure: cst.BaseExpression, step: cst.Call) -> Follow | None:
        """The function an optimizer's ``step(closure)`` evaluates: a lambda, a function or a
        method of the linted files (``self.optimizer.step(self.loss_func)``)."""
        if type(closure) is cst.Lambda:
            return Follow(closure, (), None)
        callees = self.callee(closure)
        if not callees or len(callees) != 1:
            return None
        ctx, node, cls, self_obj = callees[0]
        return self.follow(ctx, node, cls, self_obj, step, [], {})

    def _constants_passed_on(
        self, given: dict[str, cst.BaseExpression], known: tuple[tuple[str, object], ...]
    ) -> list[tuple[str, object]]:
        """``backward(loss, scaler)`` where this function's ``scaler`` parameter holds a literal
        its caller passed (``scaler=None``) and is never assigned here: the same literal."""
        mine = self.frame.constants
        if not mine:
            return []
        taken = {name for name, _ in known}
        return [
            (name, mine[arg.value])
            for name, arg in given.items()
            if name not in taken
            and type(arg) is cst.Name
            and arg.value in mine
            and not self.frame.rebinds(arg.value)
        ]

    def is_closure(self, name: str) -> bool:
        func = self.frame.func
        if func is None or name not in self.frame.local_defs:
            return False
        return name in closure_names(self.ctx, func)

    def follow(
        self,
        ctx: FileContext,
        node: cst.FunctionDef,
        cls: ClassInfo | None,
        self_obj: Obj | None,
        call: cst.Call,
        positional: list[cst.BaseExpression],
        keywords: dict[str, cst.BaseExpression],
    ) -> Follow:
        given = given_arguments(node, cls, positional, keywords)
        bound: dict[str, Obj | None] = {}
        params = params_of(node)
        if self_obj is not None and len(own_params(node, cls)) < len(params):
            bound[params[0].name.value] = self_obj  # ``self`` of the method followed
        bound.update((name, self.frame.resolve(arg)) for name, arg in given.items())
        bound = {k: v for k, v in bound.items() if v is not None}
        starred = any(arg.star for arg in call.args)
        constants = () if starred else constants_of(node, positional, keywords, cls)
        if not starred:
            constants = (*constants, *self._constants_passed_on(given, constants))
        conditions = () if starred else self._conditions(given)
        maybe_none = frozenset(
            k for k, arg in given.items() if k in bound and self._maybe_none(arg)
        )
        losses = tuple(
            (k, divided(self.frame, arg, self.host.at))
            for k, arg in given.items()
            if k not in bound
            and (is_loss_name(k) or type(arg) is cst.Name and is_loss_name(arg.value))
        )
        called_at = self.site(call)
        site = called_at if losses else None
        return Follow(
            node,
            tuple(bound.items()),
            cls,
            constants,
            ctx,
            conditions,
            maybe_none,
            losses,
            site,
            called_at,
            () if starred else tuple((k, arg) for k, arg in given.items() if k not in bound),
        )

    def _maybe_none(self, arg: cst.BaseExpression) -> bool:
        """An argument the caller may hold as None: a name it assigns None or a conditional
        expression, or its own parameter when it tests that parameter against None itself
        (``if scaler is not None:``) or defaults it to None."""
        if type(arg) is not cst.Name:
            return False
        values = self.frame.local_values.get(arg.value, ())
        if maybe_none_values(values):
            return True
        func = self.frame.func
        if values or func is None or arg.value not in self.frame.params:
            return False
        return arg.value in none_tested(self.ctx, func)

    def _conditions(
        self, given: dict[str, cst.BaseExpression]
    ) -> tuple[tuple[str, cst.BaseExpression, FileContext], ...]:
        """Parameters handed a condition of the caller (see ``Follow.conditions``)."""
        out = []
        for name, arg in given.items():
            if type(arg) in (cst.Comparison, cst.BooleanOperation, cst.UnaryOperation):
                out.append((name, arg, self.ctx))
            elif type(arg) is cst.Name and arg.value in self.frame.conditions:
                out.append((name, *self.frame.conditions[arg.value]))
            elif type(arg) is cst.Name and (flag := guard_flag(self.frame, arg.value)):
                out.append((name, flag, self.ctx))  # ``need_update=need_update``
        return tuple(out)

    def helper_without_moves(
        self,
        call: cst.Call,
        callee: list[tuple[FileContext, cst.FunctionDef, ClassInfo | None, Obj | None]],
        positional: list[cst.BaseExpression],
        keywords: dict[str, cst.BaseExpression],
    ) -> list[Action]:
        """A function of a linted file that mentions no move: at most a forward pass (it may
        compute the loss), and it may pass an optimizer it receives on to anything. An
        argument whose parameter it only calls methods of (``optimizer.state_dict()`` in a
        checkpoint helper) stays put."""
        handed = {id(arg.value) for arg in call.args if arg.star}
        for ctx, node, cls, _ in callee:
            passed = passed_on(ctx, node)
            given = given_arguments(node, cls, positional, keywords)
            handed |= {id(arg) for name, arg in given.items() if name in passed}
            unfilled = positional[len(own_params(node, cls)) :]  # into ``*args``
            handed |= {id(arg) for arg in unfilled}
        actions: list[Action] = []
        for action in self.apis.opaque_args(call, frozenset(handed)):
            actions.append(Mark("forward") if isinstance(action, Mark) else action)
        return actions
