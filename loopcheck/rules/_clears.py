"""Whether a recorded clear really dropped gradients a step of the loop around needed: the
question LC108 and the two-loss case of LC102 both ask."""

from __future__ import annotations

from typing import TYPE_CHECKING

from loopcheck.protocol import Move

if TYPE_CHECKING:
    from loopcheck.static.model import FileModel, LoopSummary, Record


def drops_gradients(model: FileModel, record: Record) -> bool:
    """Whether a clear recorded as dropping an earlier backward's gradients before any step
    used them stands: the loop around steps that optimizer, and the clear is no LC102's."""
    if record.root is not None and not record.root.stepped:
        return False  # no step at all: that is LC105's finding, not this one
    loop = model.innermost_loop(record.cause) if record.cause is not None else None
    while loop is not None and record.site not in loop.sites:
        # the backward in a loop of its own (nanochat's passes over one example), cleared in
        # a loop around it that never steps (its examples): that loop is the micro-batch loop
        loop = loop.parent
        if loop is not None and loop.has(Move.STEP, record.key):
            loop = None
    if loop is None:
        return False  # cleared outside the micro-batch loop: a dropped partial accumulation
    # a step after the loop, not one in a loop beside it (nanoGPT's bench: a profiling
    # loop that never steps, next to the benchmark's loop that does)
    stepped_after = record.root is not None and any(
        key == record.key and site not in loop.sites and model.reaches(site, loop)
        for key, site in record.root.step_sites
    )
    if not steps_around(loop, record.key) and not stepped_after:
        # neither the loops around nor the function around it (``train_step()``'s step
        # after its micro-batch loop) step this optimizer: missing step, not this bug
        return False
    # one finding per place: a clear right before a step is LC102
    return not any(other.site == record.site for other in model.violations("LC102"))


def steps_around(loop: LoopSummary | None, key: str) -> bool:
    while loop is not None:
        if loop.has(Move.STEP, key):
            return True
        loop = loop.parent
    return False
