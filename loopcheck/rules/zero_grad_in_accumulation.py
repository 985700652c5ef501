"""LC108 zero-grad-in-accumulation."""

from __future__ import annotations

from typing import TYPE_CHECKING

from loopcheck.rules._base import ProtocolRule
from loopcheck.rules._clears import drops_gradients

if TYPE_CHECKING:
    from loopcheck.static.model import FileModel, Record


class ZeroGradInAccumulation(ProtocolRule):
    """## What it does
    Flags a `zero_grad()` that runs between two micro-batches of one gradient-accumulation
    step: after a backward whose gradients no step has applied yet, and before the next
    backward. The micro-batch loop may be a trainer's `train_step()` whose step follows the
    loop, a meta-learning loop over the tasks of a meta-batch, or the calls of an optimizer
    wrapper's `update_params(loss)` between two steps; a clear may be a helper that zeroes
    each parameter's gradient by hand.

    A clear guarded to run on the first micro-batch of each window is fine:
    `if i % accum == 0:` on the counter whose `(i + 1) % accum == 0` guards the step, or
    `if k == 1:` on a counter cycled beside the loader
    (`for batch, k in zip(loader, cycle(range(1, accum + 1))):`) whose `k % accum == 0`
    guards the step. So is a clear after a backward that keeps its graph for a second one
    (`loss.mean().backward(retain_graph=True)` only feeding per-sample norm hooks, as in
    ghost clipping, then the clear, then the rescaled loss's backward): the first pass is a
    probe, not a micro-batch.

    ## Why is this bad?
    Each clear throws away the gradients accumulated so far, so the step applies the last
    micro-batch only: the effective batch is N times smaller than configured and the
    gradient noise N times larger. Nothing raises.

    ## Example
    ```python
    for step in range(steps):
        for micro_step in range(accum):
            optimizer.zero_grad()
            loss = criterion(model(next(batches)), target) / accum
            loss.backward()
        optimizer.step()
    ```

    ## Use instead
    ```python
    for step in range(steps):
        optimizer.zero_grad()
        for micro_step in range(accum):
            loss = criterion(model(next(batches)), target) / accum
            loss.backward()
        optimizer.step()
    ```
    """

    code = "LC108"
    name = "zero-grad-in-accumulation"
    summary = "gradients cleared inside the micro-batch loop"

    message = (
        "`{call}` clears gradients accumulated by an earlier micro-batch before any step used "
        "them: only the last micro-batch counts; clear once per optimizer step"
    )

    def keep(self, model: FileModel, record: Record) -> bool:
        return not record.between_losses and drops_gradients(model, record)
