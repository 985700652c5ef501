"""The protocol on event sequences directly: no parsing, no torch."""

from __future__ import annotations

import pytest

from loopcheck.protocol import UNKNOWN, Event, Grads, Move, OptState, advance, run

Z, F, B, C, S = (Move.ZERO, Move.FORWARD, Move.BACKWARD, Move.CLIP, Move.STEP)
I = Move.ITERATION  # noqa: E741 - one letter per move keeps the sequences readable


def seq(*moves: Move) -> list[Event]:
    """Events named by their index, so that a violation's ``where`` says which event it blames."""
    return [Event(m, where=i) for i, m in enumerate(moves)]


def codes(*moves: Move, state: OptState = UNKNOWN) -> list[tuple[str, int]]:
    _, found = run(seq(*moves), state)
    return [(v.code, v.where) for v in found]


@pytest.mark.parametrize(
    "moves",
    [
        (Z, F, B, S),  # the textbook order
        (F, Z, B, S),  # zero between forward and backward
        (F, B, S, Z),  # zero at the end
        (Z, F, B, C, S),  # clipping in its place
        (Z, F, B, S, I, Z, F, B, S, I, Z, F, B, S),  # several iterations
        (F, B, S, Z, I, F, B, S, Z),  # zero at the end, several iterations
        (Z, F, B, F, B, S),  # two backwards into one step (GAN real + fake)
        (Z, B, I, B, I, B, S, I, Z, B, I, B),  # flat accumulation: step and zero every 3
        (S, Z, F, B, I, S, Z, F, B),  # rotated loop: step first, on the previous backward
    ],
)
def test_correct_sequences_are_silent(moves: tuple[Move, ...]) -> None:
    assert codes(*moves) == []


def test_zero_between_backward_and_step_is_lc102_at_the_zero() -> None:
    assert codes(Z, F, B, Z, S) == [("LC102", 3)]


def test_zero_discarding_a_micro_batch_is_lc108() -> None:
    assert codes(Z, B, Z, B, S) == [("LC108", 2)]


def test_zero_at_top_of_flat_accumulation_loop_is_lc108_across_iterations() -> None:
    # for i: zero; backward; if last: step  — the iteration without a step is followed by a zero
    assert codes(Z, B, I, Z, B, S) == [("LC108", 3)]


def test_zero_of_previous_iterations_gradients_before_step_is_not_lc102() -> None:
    # for: zero; step; backward — the step comes first: LC103, not LC102
    assert codes(Z, F, S, B, I, Z, F, S, B) == [("LC103", 2), ("LC103", 7)]


def test_step_on_cleared_gradients_is_lc103_once_a_backward_follows() -> None:
    assert codes(Z, F, S, B) == [("LC103", 2)]
    assert codes(Z, F, S) == []  # no backward follows: not "before backward"


def test_backward_on_applied_gradients_then_step_is_lc101() -> None:
    assert codes(B, S, I, B, S) == [("LC101", 4)]


def test_clip_after_step_is_lc106_and_before_backward_is_lc107() -> None:
    assert codes(Z, B, S, C) == [("LC106", 3)]
    assert codes(B, S, Z, C) == [("LC106", 3)]
    assert codes(Z, C, F, B, S) == [("LC107", 1)]
    assert codes(B, S, Z, I, C, B, S) == [("LC107", 4)]
    assert codes(Z, C, S) == []  # no backward follows: nothing to clip before


def test_unknown_state_makes_no_claim() -> None:
    assert codes(S, S) == [] and codes(C, S, B, S) == []
    state, found = run(seq(Z, B, Move.OPAQUE, S))
    assert found == [] and state.grads is Grads.UNKNOWN


def test_a_clip_right_after_a_step_of_unknown_gradients_is_too_late() -> None:
    assert codes(S, C) == [("LC106", 1)]
    # a backward, one that may have run, or unseen code in between: no claim
    assert codes(S, B, C) == []
    assert codes(S, Move.MAYBE_BACKWARD, C) == []
    assert codes(S, Move.OPAQUE, C) == []
    # the next iteration starts afresh
    assert codes(S, Move.ITERATION, C) == []


def test_a_step_before_a_loop_is_not_the_loops_iterations() -> None:
    # a training run that ended in a step, then a loop entered again (the run started anew):
    # a clip of cleared gradients there is no clip after this iteration's step
    assert codes(Z, B, S, Move.LOOP_ENTRY, Z, C) == []
    assert codes(Z, B, S, Z, C) == [("LC106", 4)]


def test_maybe_backward_makes_no_claim() -> None:
    assert codes(Z, Move.MAYBE_BACKWARD, S, B) == []


def test_reading_gradients_by_hand_excuses_a_clear_before_the_next_backward() -> None:
    assert codes(Z, B, Move.GRAD_ACCESS, Z, B, S) == []


def test_amp_rules() -> None:
    def scaled_backward(i: int) -> Event:
        return Event(B, where=i, scaled=True)

    events = [Event(Z, 0), scaled_backward(1), Event(C, 2), Event(S, 3, via_scaler=True)]
    assert [(v.code, v.where) for v in run(events)[1]] == [("LC301", 2)]
    events = [Event(Z, 0), scaled_backward(1), Event(Move.UNSCALE, 2), Event(C, 3)]
    assert run(events)[1] == []
    events = [Event(Z, 0), scaled_backward(1), Event(S, 2)]
    assert [(v.code, v.where) for v in run(events)[1]] == [("LC302", 2)]


def test_undivided_accumulated_loss_is_lc201_at_the_backward() -> None:
    # the same backward (a micro-batch loop) reached twice before the step, undivided
    events = [Event(Z, 0), Event(B, 1, divided=False), Event(B, 1, divided=False), Event(S, 3)]
    assert [(v.code, v.where) for v in run(events)[1]] == [("LC201", 1)]
    events = [Event(Z, 0), Event(B, 1, divided=True), Event(B, 1, divided=True), Event(S, 3)]
    assert run(events)[1] == []
    # two different losses into one step (a GAN's real and fake halves) are no accumulation
    events = [Event(Z, 0), Event(B, 1, divided=False), Event(B, 2, divided=False), Event(S, 3)]
    assert run(events)[1] == []


def test_clip_or_schedule_per_micro_batch() -> None:
    clip, sched = Event(Move.CLIP, 2), Event(Move.SCHED_STEP, 2)
    assert codes(Z, B, Move.CLIP, B, S) == []  # another loss after the clip: not a micro-batch
    events = [Event(Z, 0), Event(B, 1), clip, Event(B, 1), Event(S, 3)]
    assert [(v.code, v.where) for v in run(events)[1]] == [("LC203", 2)]
    events = [Event(Z, 0), Event(B, 1), sched, Event(B, 1), Event(S, 3)]
    assert [(v.code, v.where) for v in run(events)[1]] == [("LC202", 2)]
    # a flat guard: the scheduler steps in an iteration that does not step the optimizer
    events = [Event(Z, 0), Event(B, 1), sched, Event(I), Event(B, 1), Event(S, 3)]
    assert [(v.code, v.where) for v in run(events)[1]] == [("LC202", 2)]


def test_scaler_step_without_update_is_lc303_at_the_next_iteration() -> None:
    step = Event(S, 2, via_scaler=True)
    events = [Event(Z, 0), Event(B, 1, scaled=True), step, Event(I), Event(Z, 0)]
    assert [(v.code, v.where) for v in run(events)[1]] == [("LC303", 2)]
    update = Event(Move.SCALER_UPDATE, 3)
    events = [Event(Z, 0), Event(B, 1, scaled=True), step, update, Event(I), Event(Z, 0)]
    assert run(events)[1] == []


def test_framework_clip_unscales_itself() -> None:
    events = [Event(Z, 0), Event(B, 1, scaled=True), Event(Move.CLIP, 2, unscales=True)]
    assert run(events)[1] == []


def test_scheduler_before_step_is_lc401() -> None:
    events = [Event(Z, 0), Event(B, 1), Event(Move.SCHED_STEP, 2), Event(S, 3)]
    assert [(v.code, v.where) for v in run(events)[1]] == [("LC401", 2)]
    events = [Event(Z, 0), Event(B, 1), Event(S, 2), Event(Move.SCHED_STEP, 3)]
    assert run(events)[1] == []


def test_states_are_hashable_values() -> None:
    a, _ = advance(UNKNOWN, Event(Z, 0))
    b, _ = advance(UNKNOWN, Event(Z, 0))
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1


def test_gradients_inherited_by_a_loop_are_not_its_micro_batches() -> None:
    # epoch loop: a trailing partial accumulation cleared at the start of the next epoch
    entry = Move.LOOP_ENTRY
    assert codes(Z, B, entry, Z, B, S) == []
    assert codes(Z, B, I, Z, B, S) == [("LC108", 3)]


def test_gradients_normalised_by_hand_excuse_undivided_losses() -> None:
    events = [
        Event(Z, 0),
        Event(B, 1, divided=False),
        Event(B, 2, divided=False),
        Event(Move.GRAD_RESCALE, 3),
        Event(S, 4),
    ]
    assert run(events)[1] == []
