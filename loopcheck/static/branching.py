"""How a branch condition divides the paths: framework gates (an accelerator's sync, an
engine's accumulation boundary), counters and their residues, flags set to literals, a loss
scaler's presence and unscale stage, and a helper's flag that stands for its caller's
condition."""

from __future__ import annotations

import libcst as cst

from loopcheck.static import conditions, guards
from loopcheck.static.frames import Frame, FrameStack
from loopcheck.static.index import FileContext
from loopcheck.static.ownership import constructor_of
from loopcheck.static.paths import PathState
from loopcheck.static.roles import Role
from loopcheck.static.syntax import chains_in, dotted, negated_if, without_not
from loopcheck.static.tree import walk


class Branches(FrameStack):
    """The part of the interpreter that decides and splits on branch conditions."""

    fact_names: dict[str, set[str]]

    def names_changed(self) -> None:
        raise NotImplementedError

    def counter_base(self, counter: str, frame: Frame | None, at: cst.CSTNode | None) -> int | None:
        raise NotImplementedError

    def gate_of_context(self, item: cst.BaseExpression) -> str | None:
        """``with accelerator.accumulate(model):``: prepared optimizers and schedulers act
        only when the accelerator syncs gradients."""
        if not (type(item) is cst.Call and type(item.func) is cst.Attribute):
            return None
        if item.func.attr.value != "accumulate":
            return None
        owner = self.frame.resolve(item.func.value)
        if owner is None or owner.role is not Role.ACCELERATOR:
            return None
        return f"<sync:{owner.key}>"

    def gate_condition(self, test: cst.BaseExpression) -> tuple[str, bool] | None:
        """A condition that reads a gate: ``accelerator.sync_gradients``,
        ``engine.is_gradient_accumulation_boundary()``."""
        test, negated = without_not(test)
        polarity = not negated
        if type(test) is cst.Attribute and test.attr.value == "sync_gradients":
            owner = self.frame.resolve(test.value)
            if owner is not None and owner.role is Role.ACCELERATOR:
                return f"<sync:{owner.key}>", polarity
        synced = self.counted_sync(test)
        if synced is not None:
            return synced[0], synced[1] != negated
        if (
            type(test) is cst.Call
            and type(test.func) is cst.Attribute
            and test.func.attr.value == "is_gradient_accumulation_boundary"
        ):
            owner = self.frame.resolve(test.func.value)
            if owner is not None and owner.role is Role.ENGINE:
                return f"<boundary:{owner.key}>", polarity
        return None

    def counted_sync(self, test: cst.BaseExpression) -> tuple[str, bool] | None:
        """``training_step % args.gradient_accumulation_steps == 0`` on a counter that numbers
        the micro-batches from 1, beside an accelerator built with that many accumulation
        steps: true exactly when the accelerator syncs (its prepared optimizer steps), so the
        same fact. With the polarity of the test (``!= 0``: true when it does not sync)."""
        if not self.loop_stack or type(test) is not cst.Comparison:
            return None
        left = test.left
        if type(left) is not cst.BinaryOperation or type(left.operator) is not cst.Modulo:
            return None
        guard = guards.read_guard(self.ctx.code, test)
        if guard is None:
            return None
        accelerator = self._accumulating_accelerator(guard.modulus)
        if accelerator is None:
            return None
        base = self.counter_base(guard.counter, self.frame, self.at)
        if base is None or guard.offset != 1 - base:
            return None
        return f"<sync:{accelerator}>", guard.zero

    def _accumulating_accelerator(self, modulus: str) -> str | None:
        """The key of an accelerator in sight built with ``gradient_accumulation_steps`` given
        as ``modulus`` (the same text)."""
        frame: Frame | None = self.frame
        while frame is not None:
            for name in frame.local_values:
                obj = frame.resolve_name(name)
                if obj is None or obj.role is not Role.ACCELERATOR:
                    continue
                built = constructor_of(frame, cst.Name(name))
                for arg in built.args if built is not None else ():
                    if (
                        arg.keyword is not None
                        and arg.keyword.value == "gradient_accumulation_steps"
                    ):
                        if self.ctx.code(arg.value) == modulus:
                            return obj.key
            frame = frame.parent
        return None

    def split(
        self, test: cst.BaseExpression, states: set[PathState], substitute: bool = True
    ) -> tuple[set[PathState], set[PathState]]:
        """The paths that take a branch and those that skip it, with what each learns.
        ``substitute``: names of the callee may stand for conditions of its caller (not once
        the condition is the caller's own text)."""
        ctx = self.ctx
        if substitute:
            replaced, ctx = self.caller_condition(test, ctx)
            substitute = replaced is test
            test = replaced
        inner, negated = without_not(test)
        if type(inner) is cst.BooleanOperation:
            # each operand decided on its own: ``i > 0 and i % n == 0``
            left_taken, left_skipped = self.split(inner.left, states, substitute)
            if type(inner.operator) is cst.And:
                right_taken, right_skipped = self.split(inner.right, left_taken, substitute)
                taken, skipped = right_taken, left_skipped | right_skipped
            else:
                right_taken, right_skipped = self.split(inner.right, left_skipped, substitute)
                taken, skipped = left_taken | right_taken, right_skipped
            return (skipped, taken) if negated else (taken, skipped)
        sign = conditions.counter_sign(test)
        guard = conditions.modular(ctx.code, test, ctx.cycles)
        if guard is not None and conditions.modulus_of(guard[0]) not in ctx.tracked_moduli:
            guard = None
        if guard is not None and guard[0].split("%")[1] in ctx.cycles:
            sign = None  # ``k == 0`` on a cycled counter is a residue, not the first iteration
        gate = self.gate_condition(test)
        presence = self.presence(inner) if substitute and gate is None else None
        if gate is not None:
            text, polarity = gate
            tracked = True
        elif presence is not None:
            # ``if scaler is not None:`` here and ``if self.fp16_scaler is not None:`` in the
            # method that backpropagates test the same object: one fact, named by its key
            text, tests_none, names = presence
            polarity = tests_none != negated
            known = self.fact_names.get(text, set())
            if not names <= known:
                self.fact_names[text] = known | names
                self.names_changed()
            tracked = True
        elif (flag := dotted(inner)) is not None and any(
            conditions.known(s.facts, flag) is not None for s in states
        ):
            # a flag set to a literal or a saved mode (``if was_training:``,
            # ``if self._weight_updated_in_prev_step:``), not a counter
            text, polarity, tracked = flag, not negated, True
        elif sign is not None:
            text, polarity, names = sign
            self.fact_names.setdefault(text, names)
            tracked = True
        elif guard is not None:
            text, polarity, names = guard
            self.fact_names.setdefault(text, names)
            tracked = True
        else:
            found, polarity = conditions.condition_key(ctx.code, test)
            text = found  # type: ignore[assignment]
            tracked = found is not None and found in ctx.tracked_conditions
        taken: set[PathState] = set()
        skipped: set[PathState] = set()
        for s in states:
            known = conditions.known(s.facts, text) if tracked else None
            if known is None and guard is not None and gate is None:
                known = conditions.residue_excludes(s.facts, text)
                if known is not None:
                    s = s.with_fact(text, known)
            if known is None:
                if tracked:
                    taken.add(s.with_fact(text, polarity))
                    skipped.add(s.with_fact(text, not polarity))
                else:
                    taken.add(s)
                    skipped.add(s)
            elif known == polarity:
                taken.add(s)
            else:
                skipped.add(s)
        return taken, skipped

    def none_matched_dropped(self, stmt: cst.If) -> bool:
        """Whether the paths that match no arm of ``stmt`` are dropped: ``stmt`` ends an
        ``if``/``elif`` chain, with no ``else``, that compares one setting with two or more
        strings (``if args.loss == "wgan-gp": ... elif args.loss == "r1": ...``). Such a
        chain enumerates the setting's choices: a path matching none exists only because the
        choices were not read (a step with no backward on it is no LC103)."""
        if type(stmt.orelse) is cst.If:
            end = self.ctx.remember("enumeration", stmt, lambda: conditions.enumeration_end(stmt))
            if end is not None:
                self.ctx.remember("enumeration-end", end, lambda: True)
        return stmt.orelse is None and self.ctx.remember("enumeration-end", stmt, lambda: False)

    def presence(self, test: cst.BaseExpression) -> tuple[str, bool, set[str]] | None:
        """``x is None``, ``x is not None`` or a bare ``x`` on a loss scaler (resolved as one,
        or named for one): the fact's text, whether the test is ``is None``, and the names it
        reads."""
        tests_none = False
        if type(test) is cst.Comparison and len(test.comparisons) == 1:
            comp = test.comparisons[0]
            if not (type(comp.comparator) is cst.Name and comp.comparator.value == "None"):
                return None
            if type(comp.operator) not in (cst.Is, cst.IsNot):
                return None
            tests_none = type(comp.operator) is cst.Is
            test = test.left
        if type(test) not in (cst.Name, cst.Attribute):
            return None
        last = test.value if type(test) is cst.Name else test.attr.value
        obj = self.frame.resolve(test)
        if "scaler" not in last.lower() and (obj is None or obj.role is not Role.SCALER):
            return None
        # named by the last part of its name, which a local alias keeps
        # (``fp16_scaler = model.fp16_scaler``): the same in every analysis of the loop,
        # whether or not the object resolves there
        return f"@{last} is None", tests_none, chains_in(test)

    def unscale_stage(self, stmt: cst.If) -> tuple[list[str], bool] | None:
        """A test of a GradScaler's per-optimizer stage (``OptState.UNSCALED``) around an
        ``unscale_`` of known optimizers: those optimizers, and whether the test holds when
        they were already unscaled."""
        inner, negated = without_not(stmt.test)
        if not (type(inner) is cst.Comparison and len(inner.comparisons) == 1):
            return None
        comp = inner.comparisons[0]
        if not (dotted(comp.comparator) or "").endswith("OptState.UNSCALED"):
            return None
        keys: list[str] = []
        for node in walk(stmt.body):
            if (
                type(node) is cst.Call
                and type(node.func) is cst.Attribute
                and node.func.attr.value == "unscale_"
                and node.args
            ):
                held = self.frame.resolve(node.args[0].value)
                if held is not None and held.role is Role.OPTIMIZER:
                    keys.extend(held.members or (held.key,))
        if not keys:
            return None
        holds_when_unscaled = type(comp.operator) in (cst.Is, cst.Equal)
        return keys, holds_when_unscaled != negated

    def caller_condition(
        self, test: cst.BaseExpression, ctx: FileContext
    ) -> tuple[cst.BaseExpression, FileContext]:
        """``if update_grad:`` in a helper called with ``update_grad=(i + 1) % n == 0``: the
        caller's condition (negated under ``not``), read in the caller's file."""
        inner, negated = without_not(test)
        if type(inner) is not cst.Name:
            return test, ctx
        if inner.value not in self.frame.conditions:
            # a local flag set once to a step guard (``is_last_accum_step = (step + 1) %
            # n == 0``): a branch on it is a branch on that guard
            flag = conditions.guard_flag(self.frame, inner.value)
            if flag is not None:
                return negated_if(flag, negated), ctx
            return test, ctx
        expr, caller = self.frame.conditions[inner.value]
        return negated_if(expr, negated), caller
