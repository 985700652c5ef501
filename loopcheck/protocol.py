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
from dataclasses import dataclass, field, fields, replace
from operator import attrgetter


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
    # ZERO that drops a batch on purpose (then skips the step); SCHED_STEP told its epoch or
    # metric (``scheduler.step(epoch)``: the schedule is not shifted by when it is called),
    # or of a scheduler whose optimizer is unknown; OPAQUE of an optimizer built anew (it
    # starts from nothing, and has stepped nothing)
    deliberate: bool = False
    # BACKWARD of a loss that also feeds other optimizers (a GAN's generator loss reaches the
    # discriminator), or whose origin is not fully known: clearing what it left is no LC108
    shared: bool = False
    unscales: bool = False  # CLIP by a framework that unscales AMP gradients itself
    # BACKWARD in a helper of a loss its caller handed in: where the caller did so (two calls
    # handing two losses are two losses, not accumulation; a loss left undivided is the
    # caller's to divide, LC201 is reported there)
    handed_at: Hashable = None
    # BACKWARD: the calls through which the analysis reached it (the static observer's helper
    # call sites): one helper's backward run from two call sites is two losses, not the same
    # backward again (a GAN's ``backward_D(real_a, fake_a)`` then ``backward_D(real_b, fake_b)``)
    context: Hashable = None
    # the hash, computed once: observers remember transitions by (state, event)
    _hash: int = field(default=0, init=False, compare=False, repr=False)

    def __hash__(self) -> int:
        return self._hash or _hash_once(self, _event_values)


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
    backward_sites: frozenset = frozenset()  # where the backward calls since clear/step were
    undivided_at: Hashable = None  # the first backward since clear/step whose loss was not divided
    accumulated_undivided: bool = False  # an undivided backward repeated at the same place
    scaled: bool = False  # the current gradients come from a scaled loss
    unscaled: bool = False  # scaler.unscale_ since the last backward
    unscaled_since_update: bool = False  # scaler.unscale_ since the last scaler.update()
    scaler_step_at: Hashable = None  # scaler.step(opt) since the last scaler.update()
    stepped_this_iteration: bool = False
    # stepped on gradients of unknown standing, and no backward or unseen code since: a clip
    # now clips what was applied (LC106) whatever the gradients were
    applied_unknown: bool = False
    # stepped (or handed to unseen code) earlier in the analysis: a scheduler step is no
    # longer at the start of training
    stepped_before: bool = False
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
    # the model ran forward in this iteration (told by the static observer only)
    forwarded: bool = False
    # a step, after this iteration's forward, of an earlier iteration's gradients: LC103 once
    # this iteration's backward follows (the loss was computed before the update it skipped)
    late_step: Hashable = None
    pending_step_cleared: bool = False  # ... right after a clear: any backward confirms it
    pending_clip: Hashable = None  # a clip of no fresh gradient: LC107 once a backward follows
    pending_clip_cleared: bool = False  # ... right after a clear: any backward confirms it
    clipped_at: Hashable = None  # a clip of fresh gradients: LC203 if another backward follows
    pending_sched: Hashable = None  # a scheduler step before the optimizer's: LC401 on step
    pending_sched_crossed: bool = False  # ... in an earlier micro-batch's iteration: LC202
    pending_sched_outer: bool = False  # ... before the loop now running (an epoch's top): LC401
    sched_per_micro: bool = False  # LC202 was seen in this accumulation window
    # the hash, computed once: states are hashed over and over in the sets of paths
    _hash: int = field(default=0, init=False, compare=False, repr=False)

    def __hash__(self) -> int:
        return self._hash or _hash_once(self, _state_values)


_STATE_FIELDS = tuple(f.name for f in fields(OptState) if f.compare)
_state_values = attrgetter(*_STATE_FIELDS)


def _hash_once(value: Event | OptState, fields_of: attrgetter) -> int:
    """Hash a frozen value by its compared fields and keep the hash on it."""
    found = hash(fields_of(value)) or 1
    object.__setattr__(value, "_hash", found)
    return found


_event_values = attrgetter(*(f.name for f in fields(Event) if f.compare))

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
    # A scheduler step before the optimizer's first step is still before it after a clear:
    # one from before the loop now running (an epoch's top), or from this iteration's top
    # before the clear (the schedule's first value is skipped either way).
    first = s.pending_sched_outer or not s.stepped_before
    keep_sched = s.pending_sched if first and not unused else None
    new = replace(
        UNKNOWN,
        grads=Grads.CLEAR,
        stepped_this_iteration=s.stepped_this_iteration,
        stepped_before=s.stepped_before,
        unscaled_since_update=s.unscaled_since_update,
        scaler_step_at=s.scaler_step_at,
        pending_zero=pending[0],
        pending_zero_crossed=pending[1],
        pending_zero_cause=pending[2],
        pending_zero_shared=shared,
        pending_zero_passed=passed,
        last_backward=s.last_backward if pending[0] is not None else None,
        last_backward_shared=s.last_backward_shared if pending[0] is not None else False,
        pending_step=s.pending_step,
        pending_step_cleared=s.pending_step_cleared,
        forwarded=s.forwarded,
        late_step=s.late_step,
        pending_clip=s.pending_clip,
        pending_clip_cleared=s.pending_clip_cleared,
        # a clear ends the accumulation window: a scheduler step before it was not between
        # two micro-batches of one optimizer step; one before the loop of the optimizer's
        # first step (and unless it dropped a window) is still before that step (LC401)
        pending_sched=keep_sched,
        pending_sched_outer=keep_sched is not None,
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
    # A step or clip on cleared gradients is confirmed by the optimizer's own backward, not by
    # a shared one (the generator's loss reaching the discriminator after its step); a step
    # right after a clear (it applies nothing) by any backward that reaches the optimizer.
    if s.pending_step is not None and (not e.shared or s.pending_step_cleared):
        # Confirmed by a loss shared with other optimizers (the generator's reaching the
        # discriminator after the discriminator stepped on cleared gradients), its own
        # backward may be missing rather than late: LC104, which the static observer keeps
        # only where the step's function drops a loss unbackpropagated (else LC103).
        missing = e.shared and s.pending_step_cleared
        found.append(Violation("LC104" if missing else "LC103", s.pending_step))
    if s.late_step is not None and not e.shared:
        found.append(Violation("LC103", s.late_step))
    # A clip right after a clear clipped nothing whichever loss follows (nobody clips a
    # discriminator's cleared gradients on purpose): any backward confirms it.
    if s.pending_clip is not None and (not e.shared or s.pending_clip_cleared):
        found.append(Violation("LC107", s.pending_clip))
    # The same backward again (the next micro-batch) after a clip or a scheduler step of the
    # accumulation window: the clip saw a partial sum, the schedule moved once per micro-batch.
    # a loss handed to a helper that runs the backward is told apart by the call handing it
    place = e.where if e.handed_at is None else e.handed_at
    occurrence = (place, e.context)
    repeated = occurrence in s.backward_sites
    if s.clipped_at is not None and not e.shared and repeated:
        found.append(Violation("LC203", s.clipped_at))
    per_micro = s.sched_per_micro
    if s.pending_sched is not None and not s.pending_sched_outer and not e.shared and repeated:
        found.append(Violation("LC202", s.pending_sched))
        per_micro = True
    grads = {
        Grads.STALE: Grads.PILED,
        Grads.PILED: Grads.PILED,
    }.get(s.grads, Grads.FRESH)
    undivided_at = s.undivided_at
    if undivided_at is None and e.divided is False:
        undivided_at = place
    # Several different losses into one step (GAN real + fake) are not accumulation; the same
    # backward reached again before the step is.
    sites = (
        s.backward_sites
        if repeated or len(s.backward_sites) >= 8
        else s.backward_sites | {occurrence}
    )
    new = replace(
        s,
        grads=grads,
        backward_sites=sites,
        undivided_at=undivided_at,
        accumulated_undivided=s.accumulated_undivided or (repeated and e.divided is False),
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
        applied_unknown=False,
        pending_step=s.pending_step if e.shared and not s.pending_step_cleared else None,
        pending_step_cleared=False,
        late_step=s.late_step if e.shared else None,
        pending_clip=s.pending_clip if e.shared and not s.pending_clip_cleared else None,
        pending_clip_cleared=False,
        clipped_at=None if repeated and not e.shared else s.clipped_at,
        pending_sched=None if repeated and not e.shared else s.pending_sched,
        pending_sched_crossed=False if repeated and not e.shared else s.pending_sched_crossed,
        pending_sched_outer=False if repeated and not e.shared else s.pending_sched_outer,
        sched_per_micro=per_micro,
    )
    return new, tuple(found)


def _maybe_backward(s: OptState, e: Event) -> tuple[OptState, tuple[Violation, ...]]:
    """A backward that may or may not have reached this optimizer: fresh or piled-up
    gradients stay unapplied either way; cleared or applied ones become unknown. Pending
    suspicions wait for a backward that certainly reaches the optimizer."""
    if s.grads in (Grads.FRESH, Grads.PILED, Grads.UNKNOWN):
        return (replace(s, applied_unknown=False) if s.applied_unknown else s), ()
    return replace(s, grads=Grads.UNKNOWN, consumed=False), ()


def _opaque(s: OptState, e: Event) -> tuple[OptState, tuple[Violation, ...]]:
    return replace(
        UNKNOWN, stepped_this_iteration=s.stepped_this_iteration, stepped_before=True
    ), ()


def _clip(s: OptState, e: Event) -> tuple[OptState, tuple[Violation, ...]]:
    if s.grads in (Grads.CLEAR, Grads.STALE):
        if s.stepped_this_iteration:
            return s, (Violation("LC106", e.where),)
        if s.pending_clip is None:
            cleared = s.grads is Grads.CLEAR and s.pending_zero is None
            return replace(s, pending_clip=e.where, pending_clip_cleared=cleared), ()
        return s, ()
    if s.grads in (Grads.FRESH, Grads.PILED):
        found = ()
        if s.scaled and not s.unscaled and not e.unscales:
            found = (Violation("LC301", e.where),)
        return replace(s, clipped_at=s.clipped_at or e.where), found
    if s.applied_unknown:
        # ``opt.step(); clip(...)`` in a helper whose caller runs the backward
        return s, (Violation("LC106", e.where),)
    return s, ()


def _unscale(s: OptState, e: Event) -> tuple[OptState, tuple[Violation, ...]]:
    found = (Violation("LC304", e.where),) if s.unscaled_since_update else ()
    return replace(s, unscaled=True, unscaled_since_update=True), found


def _step(s: OptState, e: Event) -> tuple[OptState, tuple[Violation, ...]]:
    found: list[Violation] = []
    pending_step = s.pending_step
    pending_step_cleared = s.pending_step_cleared
    if s.pending_zero is not None:
        if s.pending_zero_passed:
            if s.last_backward == s.pending_zero_cause:
                # the same shared backward again: a micro-batch lost inside accumulation
                found.append(Violation("LC108", s.pending_zero, s.pending_zero_cause))
        elif not s.pending_zero_crossed:
            found.append(Violation("LC102", s.pending_zero, s.pending_zero_cause))
    late_step = s.late_step
    if s.grads in (Grads.FRESH, Grads.PILED) and not s.fresh_this_iteration and s.forwarded:
        late_step = e.where
    if s.grads is Grads.PILED:
        found.append(Violation("LC101", e.where))
    elif s.grads in (Grads.CLEAR, Grads.STALE) and pending_step is None:
        pending_step = e.where
        # (a clear that dropped this iteration's gradients is LC102's, not this)
        pending_step_cleared = s.grads is Grads.CLEAR and s.pending_zero is None
    if s.grads in (Grads.FRESH, Grads.PILED):
        if s.scaled and not e.via_scaler:
            found.append(Violation("LC302", e.where))
        if s.accumulated_undivided and s.undivided_at is not None:
            found.append(Violation("LC201", s.undivided_at))
    if s.pending_sched is not None:
        per_micro = s.pending_sched_crossed or s.sched_per_micro
        found.append(Violation("LC202" if per_micro else "LC401", s.pending_sched))
    new = replace(
        s,
        grads=Grads.STALE if s.grads is not Grads.UNKNOWN else Grads.UNKNOWN,
        backward_sites=frozenset(),
        undivided_at=None,
        accumulated_undivided=False,
        stepped_this_iteration=True,
        stepped_before=True,
        applied_unknown=s.grads is Grads.UNKNOWN,
        late_step=late_step,
        scaler_step_at=e.where if e.via_scaler else s.scaler_step_at,
        clipped_at=None,
        sched_per_micro=False,
        pending_sched_crossed=False,
        pending_zero=None,
        pending_zero_crossed=False,
        pending_zero_cause=None,
        pending_zero_shared=False,
        pending_zero_passed=False,
        pending_step=pending_step,
        pending_step_cleared=pending_step_cleared,
        pending_sched=None,
        pending_sched_outer=False,
    )
    return new, tuple(found)


def _scaler_update(s: OptState, e: Event) -> tuple[OptState, tuple[Violation, ...]]:
    return replace(s, unscaled_since_update=False, scaler_step_at=None), ()


def _sched_step(s: OptState, e: Event) -> tuple[OptState, tuple[Violation, ...]]:
    # fresh gradients await the step, or the optimizer never stepped yet (the scheduler
    # stepped at the top of the epoch, before the epoch's training: PyTorch skips the
    # schedule's first value): LC401 if the optimizer steps after it in the same iteration
    waiting = s.grads is Grads.FRESH or (
        not s.stepped_before and s.grads in (Grads.UNKNOWN, Grads.CLEAR) and not e.deliberate
    )
    if waiting and not s.stepped_this_iteration and s.pending_sched is None:
        return replace(s, pending_sched=e.where), ()
    return s, ()


def _grad_access(s: OptState, e: Event) -> tuple[OptState, tuple[Violation, ...]]:
    return replace(s, consumed=True), ()


def _loop_entry(s: OptState, e: Event) -> tuple[OptState, tuple[Violation, ...]]:
    # Clearing gradients a loop inherited (a trailing partial accumulation, at epoch start)
    # is not clearing inside the micro-batch loop: LC205's question, not LC108's. A scheduler
    # stepped before the loop (once per epoch) was not stepped between its micro-batches.
    if s.pending_sched is not None:
        if s.grads in (Grads.FRESH, Grads.PILED) or s.stepped_before:
            # stepped after an epoch whose last window carries over: not between the
            # micro-batches of the loop now starting
            s = replace(s, pending_sched=None, pending_sched_crossed=False)
        else:
            # stepped before the first step, at the top of the epoch: LC401 at that step
            s = replace(s, pending_sched_outer=True, pending_sched_crossed=False)
    if s.grads in (Grads.FRESH, Grads.PILED):
        return replace(s, consumed=True), ()
    if s.stepped_this_iteration or s.applied_unknown:
        # no gradients waiting: a step before the loop (a training run that ended, a loop
        # analysed again from its next call) is not this iteration's
        return replace(s, stepped_this_iteration=False, applied_unknown=False), ()
    return s, ()


def _grad_rescale(s: OptState, e: Event) -> tuple[OptState, tuple[Violation, ...]]:
    # Gradients divided by hand: the accumulated sum is normalised, whatever the losses were.
    return replace(s, consumed=True, undivided_at=None, accumulated_undivided=False), ()


def _iteration(s: OptState, e: Event) -> tuple[OptState, tuple[Violation, ...]]:
    found: tuple[Violation, ...] = ()
    if s.scaler_step_at is not None:
        # scaler.step without scaler.update before the next iteration
        found = (Violation("LC303", s.scaler_step_at),)
    if s.pending_step is not None and s.pending_step_cleared:
        # a step right after its clear, and no backward reached the optimizer in the whole
        # iteration: its backward is missing (the static observer keeps it only where the
        # step's function computes a loss it never backpropagates)
        found = (*found, Violation("LC104", s.pending_step))
    # A scheduler step while gradients accumulate (no optimizer step in this iteration)
    # waits for the next micro-batch: LC202 then.
    accumulating = s.grads is Grads.FRESH and not s.stepped_this_iteration
    # One stepped before the loop of the first step is kept only while gradients accumulate:
    # a loop whose iteration ends without a step and without gradients did not train (an
    # evaluation loop after an epoch's last scheduler step).
    keep_sched = s.pending_sched if accumulating else None
    return (
        replace(
            s,
            stepped_this_iteration=False,
            applied_unknown=False,
            fresh_this_iteration=False,
            forwarded=False,
            late_step=None,
            pending_zero_crossed=s.pending_zero is not None,
            pending_step=None,
            pending_step_cleared=False,
            pending_clip=None,
            pending_clip_cleared=False,
            pending_sched=keep_sched,
            pending_sched_crossed=keep_sched is not None and not s.pending_sched_outer,
            scaler_step_at=None,
        ),
        found,
    )


def _forward(s: OptState, e: Event) -> tuple[OptState, tuple[Violation, ...]]:
    return (s, ()) if s.forwarded else (replace(s, forwarded=True), ())


_HANDLERS = {
    Move.FORWARD: _forward,
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
