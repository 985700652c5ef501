"""How actions change path states: events applied to each optimizer's protocol state, a
backward bound to the optimizers its loss reaches, and what the protocol says recorded into
the file model (violations, and what each loop and entry point contains)."""

from __future__ import annotations

import functools
import re
from dataclasses import replace

import libcst as cst

from loopcheck.protocol import Event, Grads, Move, OptState, Violation, advance
from loopcheck.static import conditions, tensors
from loopcheck.static.bodies import function_layout
from loopcheck.static.callees import backward_of, may_step, runs_backward
from loopcheck.static.index import FileContext
from loopcheck.static.model import FileModel, LoopSummary, Record, RootSummary, Site, overlap
from loopcheck.static.modes import ModeRecorder
from loopcheck.static.moves import Backward, Emit, Forward
from loopcheck.static.paths import PathState
from loopcheck.static.relevance import CLEARING_NAMES
from loopcheck.static.roles import Obj, Role, role_from_name
from loopcheck.static.syntax import called_name, chains_in
from loopcheck.static.tree import walk

# What a ``Mark`` says of a loop, as the field of ``LoopSummary`` it sets.
_LOOP_FLAGS = {
    "forward": "forward",
    "loss": "loss_assigned",
    "clears": "clears_by_name",
    "opaque_model": "opaque_model",
    "opaque_aside": "opaque_model",
    "grads": "grads_read",
    "grads_inspected": "grads_inspected",
    "grads_rewritten": "grads_rewritten",
    "flush": "flushes",
    "autograd": "autograd",
}


_FORWARD = Event(Move.FORWARD)


class Recorder(ModeRecorder):
    """The part of the interpreter that applies events; the walk lives in ``Interpreter``."""

    model: FileModel
    loop_stack: list[LoopSummary]
    follow_stack: list[cst.CSTNode]
    root: RootSummary | None
    registry: dict[str, Obj]
    fact_names: dict[str, set[str]]
    transitions: dict[tuple[OptState, Event], tuple[OptState, tuple[Violation, ...]]]
    invariants: dict[tuple[int, int, frozenset], frozenset]
    adjacent_steps: set[Site]  # steps whose statement comes right after a clear
    step_functions: dict[Site, tuple[FileContext, cst.FunctionDef | None]]
    applied: dict[Site, set[str]]  # backward calls whose gradients a step applied: its keys
    on_residue: int  # inside a branch taken on one residue of a counter (every n-th)

    def forward(self, states: set[PathState], action: Forward) -> set[PathState]:
        """A model run forward: noted in the loops (LC104, LC502)."""
        followed = len(self.frames) > 1
        for summary in self.loop_stack:
            summary.forward = True
            summary.sites.add(action.site)
            if action.key is not None:
                summary.forward_keys.add(action.key)
            enabled = self.grad_enabled and action.graph
            if summary.eval_models is not None and action.key is not None:
                # a model that was in eval mode when the loop started runs in it
                summary.eval_model_ran |= overlap(frozenset({action.key}), summary.eval_models)
            summary.forwards.append((action.site, enabled, self.root, followed))
        if action.key is None or not self.loop_stack or not self.grad_enabled:
            return states
        if action.graph and not followed:
            self.note_eval_forward(states, action)
        # the optimizers of the model run: a step of earlier gradients after this is LC103
        # once this iteration's backward follows (the loss predates the update)
        out = set()
        for state in states:
            for key in dict.fromkeys([*self.known(), *state.keys()]):
                if action.key in self.models_of(key) and not state.get(key).forwarded:
                    state = self.apply(state, key, _FORWARD)
            out.add(state)
        return out

    def engine_side(
        self, side: bool | None, taken: set[PathState], skipped: set[PathState]
    ) -> tuple[set[PathState], set[PathState]]:
        """A branch on whether DeepSpeed runs (see ``guards.deepspeed_side``): on its DeepSpeed
        side the optimizers are the engine's, in a state the code does not show."""
        if side is None:
            return taken, skipped
        opaque = Emit(Event(Move.OPAQUE), None)
        if side:
            return self.emit_all(taken, opaque), skipped
        return taken, self.emit_all(skipped, opaque)

    def backward_under_no_grad(self, action: Backward, receiver_inside: bool) -> None:
        """LC504: a backward run with gradients off, of a loss computed in the same no-grad
        region (a graph was never built: it raises, or with ``requires_grad_()`` forced, the
        parameters get nothing)."""
        if self.grad_enabled or not receiver_inside:
            return
        loop = self.loop_stack[-1] if self.loop_stack else None
        self.model.add_record(Record("LC504", action.site, "", loop, self.root))

    def known(self) -> list[str]:
        """The keys of the optimizers in sight (containers of known members excluded)."""
        keys = []
        for obj in self.frame.optimizers():
            self.registry.setdefault(obj.key, obj)
            keys.append(obj.key)
        return keys

    def emit_all(self, states: set[PathState], action: Emit) -> set[PathState]:
        if action.gate is None:
            return {self.emit(s, action) for s in states}
        out: set[PathState] = set()
        for s in states:
            known = conditions.known(s.facts, action.gate)
            if known is None:
                out.add(s.with_fact(action.gate, False))
                s = s.with_fact(action.gate, True)
                known = True
            out.add(self.emit(s, action) if known else s)
        return out

    def emit(self, state: PathState, action: Emit) -> PathState:
        keys = action.keys
        if keys is None:
            keys = tuple(dict.fromkeys([*self.known(), *state.keys()]))
            if action.only_if_single and len(keys) != 1:
                return state
        event = action.event
        for key in keys:
            state = self.apply(state, key, event)
        if event.move is Move.ZERO:
            previous = state.last_zeroed if state.last_zeroed else frozenset()
            state = state.with_zeroed(previous | frozenset(keys))
        elif event.move is Move.STEP:
            state = state.with_zeroed(frozenset())
        return state

    def note_backward(self, site: Site, states: set[PathState]) -> None:
        if self.loop_stack and self.root is not None:
            paths = self.root.backward_facts.setdefault(site, set())
            paths |= {self.invariant(s.facts, self.loop_stack[0]) for s in states}
        for summary in self.loop_stack:
            if site not in summary.backwards:
                summary.backwards.append(site)
        if self.loop_stack and self.root is not None:
            owned = any(self.owns_update(o) for o in self.frame.optimizers())
            self.root.backwards_in_loops.append((site, self.loop_stack[0], owned))

    def note_bound(self, site: Site, keys: list[str], cleared: frozenset[str] | None) -> None:
        """Remember the optimizers a backward in a loop certainly feeds, where this code owns
        their updates (LC105 for an optimizer that never steps while others do)."""
        if not self.loop_stack or self.root is None:
            return
        bound = self.root.bound_backwards
        for key in keys:
            just_cleared = cleared is not None and key in cleared
            known = bound.get((site, key))
            if known is None:
                # an optimizer known by its parameters (not a name such as ``opt`` that may
                # hold options), and whether this code owns its updates (else the rule asks
                # whether it steps the other optimizers of the same instance)
                mine = [o for o in self.frame.optimizers() if o.key == key]
                loop = self.loop_stack[0] if self.known_models(key) and mine else None
                owned = any(self.owns_update(o) for o in mine)
                bound[(site, key)] = (loop, len(keys), just_cleared, owned)
            elif just_cleared and not known[2]:
                bound[(site, key)] = (known[0], known[1], True, known[3])

    def owns_update(self, opt: Obj) -> bool:
        """Whether the code being run is where ``opt`` gets its updates: an optimizer local to
        it or passed to it, or one its instance holds when no other method of the class that
        something calls (or an unknown base class) may step it (a micro-batch method of a
        trainer whose sibling method steps is not)."""
        if ":" in opt.key:
            return True
        cls = next((f.cls for f in reversed(self.frames) if f.cls is not None), None)
        if cls is None:
            return False
        if cls.unresolved_bases and (
            not self.loop_stack
            or type(self.loop_stack[0].node) is cst.FunctionDef
            or cls.calls_inherited()
        ):
            # a base class defined elsewhere may run this code in a loop of its own, or be
            # called by it, and step there; not when the loop is this class's own and calls
            # nothing of that base (torchtitan's ``Trainer(Stateful, Configurable)``)
            return False
        running = {id(node) for node in self.follow_stack}
        called = set(self.frames[0].ctx.referenced)
        for info in cls.mro():
            called |= info.ctx.referenced
        return not any(
            id(method) not in running and name in called and may_step(info.ctx, method)
            for info in cls.mro()
            for name, method in info.methods.items()
        )

    def models_of(self, key: str) -> frozenset[str]:
        """The models an optimizer's parameters come from (its own key included: an engine
        is its own model); empty-but-itself when unknown."""
        return self.known_models(key) | {key}

    def known_models(self, key: str) -> frozenset[str]:
        obj = self.registry.get(key)
        if obj is None:  # a step before any backward was seen: the optimizers in sight
            self.known()
            obj = self.registry.get(key)
        if obj is not None and obj.models:
            return obj.models
        scope, _, chain = key.rpartition(":")
        owner, dot, last = chain.rpartition(".")
        if dot and owner and not owner.endswith("self") and role_from_name(last) is Role.OPTIMIZER:
            # ``self.critic.optimizer``: the optimizer its owner built over its own parameters
            return frozenset({f"{scope}:{owner}" if scope else owner})
        return frozenset()

    def backward(self, state: PathState, action: Backward) -> PathState:
        """Feed a backward to the optimizers whose models its loss reaches: certainly (one
        optimizer in sight, or the loss reaches its models), or maybe (nothing says)."""
        keys = list(dict.fromkeys([*self.known(), *state.keys()]))
        found = action.origin
        hit = [k for k in keys if overlap(self.models_of(k), found.models)]
        shared = len(hit) > 1 or not found.complete
        self.note_bound(action.site, keys if len(keys) == 1 else hit, state.last_zeroed)
        for key in keys:
            if len(keys) == 1:
                move, key_shared = Move.BACKWARD, False
            elif key in hit:
                move, key_shared = Move.BACKWARD, shared
            elif found.complete and found.models and self.known_models(key):
                continue  # the loss reaches none of this optimizer's models
            elif key in state.last_zeroed:
                move, key_shared = Move.BACKWARD, True
            else:
                move, key_shared = Move.MAYBE_BACKWARD, True
            event = Event(
                move,
                action.site,
                scaled=action.scaled,
                divided=action.divided,
                shared=key_shared or action.retains,
                handed_at=action.handed_at,
                context=tuple(f.called_at for f in self.frames[1:]),
            )
            state = self.apply(state, key, event)
        return state.with_zeroed(frozenset())

    def apply(self, state: PathState, key: str, event: Event) -> PathState:
        if (
            event.move in (Move.ZERO, Move.CLIP)
            and isinstance(event.where, Site)
            and self.helps_caller()
        ):
            # a clear or a clip wrapped in a helper (an optimizer wrapper's ``zero_grad()``, a
            # GAN's ``reset_grad()``, mmengine's ``_clip_grad()``) is misplaced where its
            # caller calls it
            event = replace(event, where=self.frame.called_at)
        old = state.get(key)
        if event.move is Move.ZERO and old.grads is Grads.FRESH and self.root is not None:
            # cleared later in the body that wrote them (not by the next iteration's clear)
            wrote, clear = old.last_backward, event.where
            if isinstance(wrote, Site) and isinstance(clear, Site) and wrote.precedes(clear):
                self.root.dropped.add((wrote, key))
        memo = (old, event)
        done = self.transitions.get(memo)
        if done is None:
            done = self.transitions[memo] = advance(old, event)  # pure: the same every time
        new, violations = done
        where = event.where if isinstance(event.where, Site) else None
        for summary in self.loop_stack:
            if event.move is Move.ZERO and self.probing:
                continue  # cancels a probe's backward: not a clear of the loop's gradients
            summary.moves.add((event.move, key))
            if not self.on_residue and event.move is Move.ZERO:
                summary.unguarded_clears.add(key)
            if not self.on_residue and event.move is Move.STEP:
                summary.unguarded_steps.add(key)
            if event.move in (Move.OPAQUE, Move.ZERO, Move.STEP):
                facts = self.invariant(state.facts, summary)
                summary.move_facts.setdefault((event.move, key), set()).add(facts)
            if where is not None:
                summary.sites.add(where)
            if event.move is Move.STEP and where is not None:
                summary.steps.setdefault(key, where)
                summary.step_models.setdefault(key, self.known_models(key))
        if (
            event.move is Move.STEP or event.move is Move.OPAQUE and not event.deliberate
        ) and self.root is not None:
            # (an optimizer built anew has applied nothing yet)
            self.root.stepped = True
            self.root.stepped_keys.add(key)
            if event.move is Move.OPAQUE:
                self.root.opaque_stepped = True
        if event.move is Move.STEP and where is not None:
            if old.grads is Grads.CLEAR and old.pending_zero is None and self.loop_stack:
                self.model.cleared_steps.setdefault(where, self.loop_stack[-1])
                if self.follows_clear():
                    self.adjacent_steps.add(where)
            else:  # gradients to apply, or a clear that dropped some (LC102's)
                self.model.fed_steps.add(where)
            self.step_functions.setdefault(where, (self.ctx, self.frame.func))
            if self.root is not None:
                self.root.step_sites.add((key, where))
            if isinstance(old.last_backward, Site) and old.grads is Grads.FRESH:
                self.applied.setdefault(old.last_backward, set()).add(key)
        loop = self.loop_stack[-1] if self.loop_stack else None
        for v in violations:
            if isinstance(v.where, Site):
                cause = v.cause if isinstance(v.cause, Site) else None
                where, code = v.where, v.code
                if code == "LC108" and old.pending_zero_crossed and not old.stepped_before:
                    # a clear of an earlier iteration's gradients on a path that never
                    # stepped yet: seen again once a step ran if it is accumulation; a branch
                    # that lost its step never steps (LC105's), and its clear drops nothing
                    continue
                # another loss of the same pass follows the clear (SRGAN's fake half after the
                # real one): cleared between a backward and the step, not a micro-batch
                between = code == "LC108" and self._other_loss_after(cause, where, event.where)
                if (
                    code == "LC104"
                    and event.move is Move.ITERATION
                    and not (v.where in self.adjacent_steps and self.drops_loss(v.where))
                ):
                    # a cleared step no backward confirmed: only right after its clear (no
                    # call between that may backpropagate unseen), beside a dropped loss
                    continue
                if code == "LC104" and not self.drops_loss(v.where):
                    code = "LC103"  # no loss is left without its backward: misordered
                elif code == "LC103" and old.pending_step_cleared and self.drops_loss(v.where):
                    # a step right after its clear, in a function that computes a loss it
                    # never backpropagates (a later backward of another loss confirmed it)
                    code = "LC104"
                elif code == "LC102" and old.pending_zero_shared and isinstance(event.where, Site):
                    # the clear dropped only what another optimizer's loss left (a GAN's
                    # generator loss, already applied to the generator, reaching the
                    # discriminator), as a GAN means to: the step after it has no backward
                    # of its own. Its loss computed but never backpropagated, the backward
                    # is missing; else it comes after the step, misplaced
                    if v.cause in self.applied:
                        code = "LC104" if self.drops_loss(event.where) else "LC103"
                        where, cause = event.where, None
                if code == "LC201" and not self.applied.get(v.where, {key}) & {key}:
                    # the repeated backward is another optimizer's update, each applied by
                    # its step (SAC's actor loss reaching the critics): what it leaves here
                    # piles up (LC101's), it is no accumulation to divide
                    continue
                if code == "LC101" and self.blame_caller(loop):
                    # a helper handed the loss (a loss scaler) or one that only moves (an
                    # optimizer wrapper's step) steps what its caller never clears: the
                    # caller's loop lacks the clear, blamed at the call
                    where = self.frame.called_at
                record = Record(code, where, key, loop, self.root, cause, between_losses=between)
                self.model.add_record(record, self.invariant(state.facts, loop))
        return state.with_opt(key, new)

    def invariant(self, facts: frozenset, loop: LoopSummary | None) -> frozenset:
        """The branch facts of a path that hold for every iteration of ``loop``: conditions on
        names the loop never assigns (``use_amp``, not ``i % N == 0``)."""
        if not facts or loop is None:
            return frozenset()
        memo = (id(self.ctx), id(loop.node), facts)  # asked on every move of every path
        found = self.invariants.get(memo)
        if found is None:
            assigned = self.ctx.remember(
                "loop names", loop.node, lambda: _loop_names(self.ctx, loop.node)
            )
            found = frozenset(f for f in facts if not _identifiers(f[0]) & assigned)
            self.invariants[memo] = found
        return found

    def follows_clear(self) -> bool:
        """Whether the statement being run comes right after a clear in its block (nothing
        between them could run a backward we cannot see)."""
        at = self.at
        if at is None:
            return False
        found = function_layout(self.frame).place.get(id(at))
        if found is None or found[1] == 0:
            return False
        block, index, _ = found
        return any(
            type(node) is cst.Call and called_name(node) in CLEARING_NAMES
            for node in walk(block[index - 1])
        )

    def helps_caller(self) -> bool:
        """Whether the code running is a helper its caller calls (in a loop of the caller's,
        or in a step with no loop) that neither steps nor backpropagates: a clear or a clip
        in it is placed where the caller calls it."""
        frame = self.frame
        if not isinstance(frame.called_at, Site) or frame.func is None:
            return False
        if self.loop_stack and id(self.loop_stack[-1].node) in function_layout(frame).place:
            return False  # a loop of the helper's own
        return not may_step(frame.ctx, frame.func) and not runs_backward(
            frame.ctx, frame.func, frame.cls
        )

    def drops_loss(self, step: Site) -> bool:
        """Whether the function a step ran in computes a loss it never backpropagates."""
        found = self.step_functions.get(step)
        return found is not None and bool(tensors.dead_losses(*found))

    def blame_caller(self, loop: LoopSummary | None) -> bool:
        """Whether a loop-level finding of this helper belongs at its caller's call: the
        loop is its caller's, not one of its own, and the helper backpropagates the loss it
        was handed or runs no backward (a wrapper's ``step_and_update_lr()``): the caller's
        loop is the one to fix. A helper that runs a whole step (``train_step``, even handed
        a loss function) keeps its findings."""
        frame = self.frame
        if not isinstance(frame.called_at, Site) or loop is None or frame.func is None:
            return False
        if id(loop.node) in function_layout(frame).place:
            return False
        if isinstance(frame.handed_at, Site) and backward_of(frame.func, frozenset(frame.divided)):
            return True  # it backpropagates the loss it was handed
        return not runs_backward(frame.ctx, frame.func, frame.cls)

    def _other_loss_after(self, cause: Site | None, clear: Site, backward: object) -> bool:
        """Whether a clear comes, in the text of the function now running, between the
        backward whose gradients it drops and another backward of the same pass."""
        func = self.frame.func
        if cause is None or not isinstance(backward, Site) or backward == cause or func is None:
            return False
        if not (cause.precedes(clear) and clear.precedes(backward)):
            return False  # (``precedes`` holds only within one file)
        body = self.ctx.site(func).span
        return all(
            body.line <= site.span.line <= body.end_line for site in (cause, clear, backward)
        )

    def mark(self, what: str, states: set[PathState] | None = None) -> None:
        if what in ("stepped", "grads") and self.root is not None:
            # an update no key names: on which paths of each loop (a gradient norm read inside
            # the AMP branch's loss scaler says nothing of the fp32 branch), or outside them
            for summary in self.loop_stack:
                facts = {self.invariant(s.facts, summary) for s in states or ()}
                summary.unkeyed_facts |= facts or {frozenset()}
            if not self.loop_stack:
                self.root.unkeyed_outside = True
        if what == "stepped" and self.root is not None:
            self.root.stepped = self.root.stepped_unkeyed = True
            return
        flag = _LOOP_FLAGS.get(what)
        if flag is not None:
            for summary in self.loop_stack:
                setattr(summary, flag, True)
                if what == "opaque_model":
                    summary.opaque_training = True
                if what == "grads_rewritten":
                    # on which paths: a rewrite on the AMP branch only (improved-diffusion's
                    # fp16 master gradients) does not manage the fp32 branch's gradients
                    facts = {self.invariant(s.facts, summary) for s in states or ()}
                    summary.rewrite_facts |= facts or {frozenset()}
        if what == "grads" and self.root is not None:
            # gradients used by hand: a manual update is possible
            self.root.stepped = self.root.stepped_unkeyed = True
        if what == "grads_rewritten" and self.root is not None:
            self.root.grads_written = True


_IDENTIFIER = re.compile(r"[A-Za-z_][\w.]*")


@functools.lru_cache(maxsize=4096)
def _identifiers(text: str) -> frozenset[str]:
    """The names and dotted chains a fact's text mentions."""
    return frozenset(_IDENTIFIER.findall(text))


def _loop_names(ctx: FileContext, node: cst.CSTNode) -> set[str]:
    """Every name (and dotted chain, and its first part) a loop assigns, its target included."""
    names = set(ctx.loop_assigned(node))
    if type(node) is cst.For:
        names |= chains_in(node.target)
    return names | {n.split(".", 1)[0] for n in names if not n.startswith("self.")}
