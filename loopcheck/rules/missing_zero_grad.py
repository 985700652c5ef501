"""LC101 missing-zero-grad."""

from __future__ import annotations

from typing import TYPE_CHECKING

from loopcheck.protocol import Move
from loopcheck.rules._base import Finding, ProtocolRule

if TYPE_CHECKING:
    from collections.abc import Iterable

    from loopcheck.diagnostic import Span
    from loopcheck.static.model import FileModel, LoopSummary, Record


class MissingZeroGrad(ProtocolRule):
    """## What it does
    Flags a training loop that backpropagates and steps but never clears the gradients
    (no `zero_grad()`, no `p.grad = None`) anywhere in the loop. The finding is at the step;
    when the step is in a helper that the loop hands its loss to (a loss scaler's `__call__`,
    an `update(optimizer, loss)`) or that runs no backward (an optimizer wrapper's
    `step_and_update_lr()`, a trainer's `_step()`), it is at that call in the loop, which is
    what lacks the clear. A helper that runs a whole step (`train_step`) keeps its finding.
    A clear inside a block that probes the model (asserting `p.grad is None` around a fake
    backward) cancels only the probe; gradients averaged across processes, inspected (a norm,
    `p.grad is None`) or saved with a checkpoint are not cleared either. An optimizer
    wrapper's `update_params(loss)` that the framework calls once per iteration is such a
    loop too, and so are the evaluations of an L-BFGS closure: `lbfgs.step(closure)` calls
    the closure up to `max_iter` times, so the closure itself must clear (a clear before the
    step covers the first evaluation only). Clearing an optimizer clears the gradients of any
    other optimizer built over the same model (an Adam warm-up before L-BFGS).

    ## Why is this bad?
    `backward()` adds into `.grad`; it does not overwrite it. Without a clear, every step applies
    the sum of all gradients computed so far, so updates grow with the step count and training
    diverges or stalls. Nothing raises.

    ## Example
    ```python
    import torch

    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, y in loader:
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
    ```

    ## Use instead
    ```python
    import torch

    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, y in loader:
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
    ```
    """

    code = "LC101"
    name = "missing-zero-grad"
    summary = "the loop backprops and steps but never clears gradients"

    message = (
        "`{call}` applies gradients that pile up across iterations: this loop never clears "
        "them (call `zero_grad()` once per step)"
    )

    closure_message = (
        "`{call}` evaluates its closure again and again in one step (L-BFGS), and the closure "
        "never clears: each evaluation's gradients pile onto the last (call `zero_grad()` "
        "first in the closure)"
    )

    periodic_message = (
        "`{call}` applies gradients that pile up: this loop clears them only under a counter's "
        "guard (every n-th iteration), so what a step left uncleared (on the other iterations, "
        "or before the loop) is applied again; clear once per step, or step under the same guard"
    )

    def check(self, model: FileModel) -> Iterable[Finding]:
        for record in model.violations(self.code):
            if self.keep(model, record):
                loop = _loop_with_backward(record.loop, record.key)
                closure = loop is not None and loop.closure_evaluations
                template = self.closure_message if closure else self.message
                if _cleared_periodically(loop, record):
                    # which of the two the author meant is not known: no fix
                    message = self.periodic_message.format(call=record.site.text)
                    yield Finding(record.site.span, message, record.site.path, None)
                    continue
                yield self.finding(model, record, template.format(call=record.site.text))

    def keep(self, model: FileModel, record: Record) -> bool:
        loop = _loop_with_backward(record.loop, record.key)
        if loop is None:
            return False
        if loop.clears_by_name:
            return False
        if loop.grads_rewritten and not (loop is record.loop and model.apart_from_rewrites(record)):
            return False  # gradients managed by hand (unless only on paths this one excludes)
        # a clear (or unseen code) only on paths this one excludes (the AMP branch clears,
        # the fp32 branch of the same loop does not) does not clear this path's gradients
        clears = loop.has(Move.ZERO, record.key) or loop.has(Move.OPAQUE, record.key)
        if _cleared_periodically(loop, record):
            return True  # cleared every n-th iteration only, on the path seen piling up
        return not clears or (
            loop is record.loop and model.apart_from(record, Move.ZERO, Move.OPAQUE)
        )

    def related(self, model: FileModel, record: Record) -> Span | None:
        """The loop to clear in, when it steps one optimizer (the fix needs one)."""
        loop = _loop_with_backward(record.loop, record.key)
        if loop is None or len(set(loop.steps.values())) != 1 or loop.has_any(Move.OPAQUE):
            return None
        if loop.site.path != record.site.path:
            return None
        return loop.site.span


def _loop_with_backward(loop: LoopSummary | None, key: str) -> LoopSummary | None:
    """The innermost loop around the step that also holds this optimizer's backward."""
    while loop is not None and not (loop.has(Move.BACKWARD, key) and loop.has(Move.STEP, key)):
        loop = loop.parent
    return loop


def _cleared_periodically(loop: LoopSummary | None, record: Record) -> bool:
    """The loop that steps on this path clears the optimizer only under a counter's guard."""
    return loop is not None and loop is record.loop and loop.clears_periodically(record.key)
