"""The training-step protocol: a typestate of the five moves, shared by both observers.

Pure Python: no libcst, no torch. An observer (the static linter or the runtime watch) turns
what it sees into :class:`Event` values and feeds them, one optimizer at a time, to
:func:`advance`, which returns the optimizer's next :class:`OptState` and the violations the
event completes. The order rules live here and nowhere else.

Some violations can only be confirmed by a later event: a ``step()`` that reads no fresh gradient
is a bug (LC103) once a backward follows it in the same iteration, and a ``zero_grad()`` that
clears unused gradients is LC102 if a step follows it, LC108 if another backward does. The state
keeps such *pending* suspicions and the event that settles them reports them, at the place of the
event that caused them.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable
from dataclasses import dataclass, replace


class Move(enum.Enum):
    """What happened to an optimizer's gradients, as either observer sees it."""

    ZERO = "zero"  # gradients cleared (opt.zero_grad, model.zero_grad, p.grad = None for all)
    FORWARD = "forward"  # the model was called
    BACKWARD = "backward"  # a backward certainly produced gradients for this optimizer
    MAYBE_BACKWARD = "maybe_backward"  # a backward that may or may not reach its parameters
    CLIP = "clip"  # gradients clipped (norm or value)
    UNSCALE = "unscale"  # GradScaler.unscale_(opt)
    STEP = "step"  # opt.step() or scaler.step(opt)
    SCALER_UPDATE = "scaler_update"  # GradScaler.update()
    SCHED_STEP = "sched_step"  # an LR scheduler stepped
    GRAD_ACCESS = "grad_access"  # gradients read by hand (logging, extraction)
    GRAD_RESCALE = "grad_rescale"  # gradients normalised by hand (p.grad.mul_, p.grad /= n)
    OPAQUE = "opaque"  # something unseen that may have done anything to the optimizer
    ITERATION = "iteration"  # a new iteration of the loop that owns the step begins
    LOOP_ENTRY = "loop_entry"  # a loop starts: gradients present now come from before it


class Grads(enum.Enum):
    """Where an optimizer's gradients stand."""

    UNKNOWN = "unknown"  # no claim: nothing definite seen yet, or something opaque happened
    CLEAR = "clear"  # cleared, no backward since
    FRESH = "fresh"  # produced by backward since the last clear, not yet stepped
    STALE = "stale"  # already applied by a step, not cleared since
    PILED = "piled"  # a backward added to stale (already applied) gradients


@dataclass(frozen=True, slots=True)
class Event:
    """One move seen by an observer.

    ``where`` is the observer's own notion of place (a source position, a step index); the
    protocol only passes it back inside violations.
    """

    move: Move
    where: Hashable = None
    scaled: bool = False  # BACKWARD of a GradScaler-scaled loss
    divided: bool | None = None  # BACKWARD: loss divided by the micro-batch count (None: unknown)
    via_scaler: bool = False  # STEP through scaler.step(opt)
    deliberate: bool = False  # ZERO that drops a batch on purpose (then skips the step)
    # BACKWARD of a loss that also feeds other optimizers (a GAN's generator loss reaches the
    # discriminator), or whose origin is not fully known: clearing what it left is no LC108
    shared: bool = False


@dataclass(frozen=True, slots=True)
class Violation:
    """A broken rule: its code and the place of the event to blame."""

    code: str
    where: Hashable
    cause: Hashable = None  # the earlier event it concerns (LC102/LC108: the lost backward)


@dataclass(frozen=True, slots=True)
class OptState:
    """The protocol state of one optimizer. Immutable and hashable, so that the static observer
    can keep sets of states, one per path."""

    grads: Grads = Grads.UNKNOWN
    backwards: int = 0  # backward calls since the last clear or step (capped at 2)
    undivided_at: Hashable = None  # the first backward since clear/step whose loss was not divided
    scaled: bool = False  # the current gradients come from a scaled loss
    unscaled: bool = False  # scaler.unscale_ since the last backward
    unscaled_since_update: bool = False  # scaler.unscale_ since the last scaler.update()
    stepped_via_scaler: bool = False  # scaler.step since the last scaler.update()
    stepped_this_iteration: bool = False
    fresh_this_iteration: bool = False  # the fresh gradients come from this iteration's backward
    consumed: bool = False  # gradients read by hand since the last backward
    pending_zero: Hashable = None  # a clear of unused gradients: LC102 or LC108 once settled
    pending_zero_crossed: bool = False  # that clear happened in an earlier iteration
    pending_zero_cause: Hashable = None  # the backward whose gradients that clear dropped
    pending_zero_shared: bool = False  # ... a backward whose loss fed other optimizers too
    pending_zero_passed: bool = False  # a backward came after that (shared) clear
    last_backward: Hashable = None  # the latest backward since the last clear or step
    last_backward_shared: bool = False
    pending_step: Hashable = None  # a step on no fresh gradient: LC103 once a backward follows
    pending_clip: Hashable = None  # a clip of no fresh gradient: LC107 once a backward follows
    pending_sched: Hashable = None  # a scheduler step before the optimizer's: LC401 on step


UNKNOWN = OptState()
"""The state of an optimizer before anything definite was seen."""


def advance(state: OptState, event: Event) -> tuple[OptState, tuple[Violation, ...]]:
    """Apply ``event`` to ``state``: the next state and the violations this event completes.

    Pure: the result depends on the two values only, so observers may cache transitions."""
    handler = _HANDLERS.get(event.move)
    if handler is None:
        return state, ()
    return handler(state, event)


def _zero(s: OptState, e: Event) -> tuple[OptState, tuple[Violation, ...]]:
    pending = (s.pending_zero, s.pending_zero_crossed, s.pending_zero_cause)
    shared, passed = s.pending_zero_shared, s.pending_zero_passed
    unused = s.grads in (Grads.FRESH, Grads.PILED) and not s.consumed
    if unused and not e.deliberate and s.pending_zero is None:
        # Gradients from an earlier iteration's backward: clearing them before this
        # iteration's step cannot be LC102, only LC108 if another backward follows.
        pending = (e.where, not s.fresh_this_iteration, s.last_backward)
        shared, passed = s.last_backward_shared, False
    new = replace(
        UNKNOWN,
        grads=Grads.CLEAR,
        stepped_this_iteration=s.stepped_this_iteration,
        unscaled_since_update=s.unscaled_since_update,
        stepped_via_scaler=s.stepped_via_scaler,
        pending_zero=pending[0],
        pending_zero_crossed=pending[1],
        pending_zero_cause=pending[2],
        pending_zero_shared=shared,
        pending_zero_passed=passed,
        last_backward=s.last_backward if pending[0] is not None else None,
        last_backward_shared=s.last_backward_shared if pending[0] is not None else False,
        pending_step=s.pending_step,
        pending_clip=s.pending_clip,
        pending_sched=s.pending_sched,
    )
    return new, ()


def _backward(s: OptState, e: Event) -> tuple[OptState, tuple[Violation, ...]]:
    found: list[Violation] = []
    pending = s.pending_zero is not None and not s.pending_zero_shared
    if pending:
        found.append(Violation("LC108", s.pending_zero, s.pending_zero_cause))
    # A shared backward's leftovers (the discriminator's share of the generator's loss) are
    # cleared on purpose, unless the step that follows applies the same backward again: the
    # step settles it.
    keep_shared = s.pending_zero is not None and s.pending_zero_shared
    if s.pending_step is not None:
        found.append(Violation("LC103", s.pending_step))
    if s.pending_clip is not None:
        found.append(Violation("LC107", s.pending_clip))
    grads = {
        Grads.STALE: Grads.PILED,
        Grads.PILED: Grads.PILED,
    }.get(s.grads, Grads.FRESH)
    undivided_at = s.undivided_at
    if undivided_at is None and e.divided is False:
        undivided_at = e.where
    new = replace(
        s,
        grads=grads,
        backwards=min(s.backwards + 1, 2),
        undivided_at=undivided_at,
        scaled=e.scaled or (s.scaled and s.grads is Grads.FRESH),
        unscaled=False,
        consumed=False,
        fresh_this_iteration=True,
        pending_zero=s.pending_zero if keep_shared else None,
        pending_zero_crossed=s.pending_zero_crossed if keep_shared else False,
        pending_zero_cause=s.pending_zero_cause if keep_shared else None,
        pending_zero_shared=keep_shared,
        pending_zero_passed=keep_shared,
        last_backward=e.where,
        last_backward_shared=e.shared,
        pending_step=None,
        pending_clip=None,
    )
    return new, tuple(found)


def _maybe_backward(s: OptState, e: Event) -> tuple[OptState, tuple[Violation, ...]]:
    """A backward that may or may not have reached this optimizer: fresh or piled-up
    gradients stay unapplied either way; cleared or applied ones become unknown. Pending
    suspicions wait for a backward that certainly reaches the optimizer."""
    if s.grads in (Grads.FRESH, Grads.PILED, Grads.UNKNOWN):
        return s, ()
    return replace(s, grads=Grads.UNKNOWN, consumed=False), ()


def _opaque(s: OptState, e: Event) -> tuple[OptState, tuple[Violation, ...]]:
    return replace(UNKNOWN, stepped_this_iteration=s.stepped_this_iteration), ()


def _clip(s: OptState, e: Event) -> tuple[OptState, tuple[Violation, ...]]:
    if s.grads in (Grads.CLEAR, Grads.STALE):
        if s.stepped_this_iteration:
            return s, (Violation("LC106", e.where),)
        if s.pending_clip is None:
            return replace(s, pending_clip=e.where), ()
        return s, ()
    if s.grads in (Grads.FRESH, Grads.PILED) and s.scaled and not s.unscaled:
        return s, (Violation("LC301", e.where),)
    return s, ()


def _unscale(s: OptState, e: Event) -> tuple[OptState, tuple[Violation, ...]]:
    found = (Violation("LC304", e.where),) if s.unscaled_since_update else ()
    return replace(s, unscaled=True, unscaled_since_update=True), found


def _step(s: OptState, e: Event) -> tuple[OptState, tuple[Violation, ...]]:
    found: list[Violation] = []
    pending_step = s.pending_step
    if s.pending_zero is not None:
        if s.pending_zero_passed:
            if s.last_backward == s.pending_zero_cause:
                # the same shared backward again: a micro-batch lost inside accumulation
                found.append(Violation("LC108", s.pending_zero, s.pending_zero_cause))
        elif not s.pending_zero_crossed:
            found.append(Violation("LC102", s.pending_zero, s.pending_zero_cause))
    if s.grads is Grads.PILED:
        found.append(Violation("LC101", e.where))
    elif s.grads in (Grads.CLEAR, Grads.STALE) and pending_step is None:
        pending_step = e.where
    if s.grads in (Grads.FRESH, Grads.PILED):
        if s.scaled and not e.via_scaler:
            found.append(Violation("LC302", e.where))
        if s.backwards > 1 and s.undivided_at is not None:
            found.append(Violation("LC201", s.undivided_at))
    if s.pending_sched is not None:
        found.append(Violation("LC401", s.pending_sched))
    new = replace(
        s,
        grads=Grads.STALE if s.grads is not Grads.UNKNOWN else Grads.UNKNOWN,
        backwards=0,
        undivided_at=None,
        stepped_this_iteration=True,
        stepped_via_scaler=s.stepped_via_scaler or e.via_scaler,
        pending_zero=None,
        pending_zero_crossed=False,
        pending_zero_cause=None,
        pending_zero_shared=False,
        pending_zero_passed=False,
        pending_step=pending_step,
        pending_sched=None,
    )
    return new, tuple(found)


def _scaler_update(s: OptState, e: Event) -> tuple[OptState, tuple[Violation, ...]]:
    return replace(s, unscaled_since_update=False, stepped_via_scaler=False), ()


def _sched_step(s: OptState, e: Event) -> tuple[OptState, tuple[Violation, ...]]:
    if s.grads is Grads.FRESH and not s.stepped_this_iteration and s.pending_sched is None:
        return replace(s, pending_sched=e.where), ()
    return s, ()


def _grad_access(s: OptState, e: Event) -> tuple[OptState, tuple[Violation, ...]]:
    return replace(s, consumed=True), ()


def _loop_entry(s: OptState, e: Event) -> tuple[OptState, tuple[Violation, ...]]:
    # Clearing gradients a loop inherited (a trailing partial accumulation, at epoch start)
    # is not clearing inside the micro-batch loop: LC205's question, not LC108's.
    if s.grads in (Grads.FRESH, Grads.PILED):
        return replace(s, consumed=True), ()
    return s, ()


def _grad_rescale(s: OptState, e: Event) -> tuple[OptState, tuple[Violation, ...]]:
    # Gradients divided by hand: the accumulated sum is normalised, whatever the losses were.
    return replace(s, consumed=True, undivided_at=None), ()


def _iteration(s: OptState, e: Event) -> tuple[OptState, tuple[Violation, ...]]:
    return (
        replace(
            s,
            stepped_this_iteration=False,
            fresh_this_iteration=False,
            pending_zero_crossed=s.pending_zero is not None,
            pending_step=None,
            pending_clip=None,
            pending_sched=None,
        ),
        (),
    )


_HANDLERS = {
    Move.ZERO: _zero,
    Move.BACKWARD: _backward,
    Move.MAYBE_BACKWARD: _maybe_backward,
    Move.OPAQUE: _opaque,
    Move.CLIP: _clip,
    Move.UNSCALE: _unscale,
    Move.STEP: _step,
    Move.SCALER_UPDATE: _scaler_update,
    Move.SCHED_STEP: _sched_step,
    Move.GRAD_ACCESS: _grad_access,
    Move.GRAD_RESCALE: _grad_rescale,
    Move.ITERATION: _iteration,
    Move.LOOP_ENTRY: _loop_entry,
}


def run(events: list[Event], state: OptState = UNKNOWN) -> tuple[OptState, list[Violation]]:
    """Feed a sequence of events for one optimizer; the final state and every violation."""
    found: list[Violation] = []
    for event in events:
        state, new = advance(state, event)
        found.extend(new)
    return state, found
