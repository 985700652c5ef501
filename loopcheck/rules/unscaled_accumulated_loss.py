"""LC201 unscaled-accumulated-loss."""

from __future__ import annotations

from typing import TYPE_CHECKING

from loopcheck.protocol import Move
from loopcheck.rules._base import ProtocolRule

if TYPE_CHECKING:
    from loopcheck.static.model import FileModel, Record


class UnscaledAccumulatedLoss(ProtocolRule):
    """## What it does
    Flags a `backward()` reached several times before one optimizer step (gradient
    accumulation: a micro-batch loop or a step guard) whose loss is not divided by the number of
    micro-batches (or a token or sample count), while nothing else normalises it: no framework
    that divides (`accelerator.backward` of an accumulating Accelerator, a DeepSpeed engine) and
    no gradients rescaled by hand before the step. When a helper runs the backward of a loss it
    is handed (a MAE-style `loss_scaler(loss, optimizer, update_grad=...)`), the division is
    the caller's: the finding is at the call that hands the undivided loss in. A micro-batch
    loop over `range(N)` whose `N` is only ever the literal 1 (a module constant nobody raised)
    runs one backward per step: nothing accumulates. A unit test (a `test_*` function, a
    method of a `Test*` class or one of its helpers) that sums undivided gradients to compare
    the sum with a reference is not flagged.

    ## Why is this bad?
    `backward()` adds into `.grad`, so N undivided micro-batches produce N times the gradient
    of one batch. The effective learning rate is N times too large (or, with clipping, the
    clip threshold is effectively N times too small) and changing the accumulation count
    changes the training. Nothing raises. Several different losses into one step (a GAN's real
    and fake halves, auxiliary losses, one backward helper called for two pairs of inputs) are
    not accumulation and are not flagged, nor are the
    query losses of a meta-learning batch summed by design (MAML), nor a loss function handed
    the token count it normalises by (`loss_fn(pred, labels, global_valid_tokens)`). A loss
    multiplied by a token count is not divided: the gradients must then be divided by hand
    (`p.grad *= 1 / num_tokens`) before the step.

    ## Example
    ```python
    import torch

    model = torch.nn.Linear(8, 1)
    optimizer = torch.optim.AdamW(model.parameters())
    for batch in loader:
        optimizer.zero_grad()
        for micro in batch.split(4):
            loss = torch.nn.functional.mse_loss(model(micro), micro[:, :1])
            loss.backward()
        optimizer.step()
    ```

    ## Use instead
    ```python
    import torch

    model = torch.nn.Linear(8, 1)
    optimizer = torch.optim.AdamW(model.parameters())
    for batch in loader:
        optimizer.zero_grad()
        micros = batch.split(4)
        for micro in micros:
            loss = torch.nn.functional.mse_loss(model(micro), micro[:, :1])
            (loss / len(micros)).backward()
        optimizer.step()
    ```
    """

    code = "LC201"
    name = "unscaled-accumulated-loss"
    summary = (
        "several backward calls per step with a loss not divided by the number of micro-batches"
    )

    message = (
        "`{call}` accumulates undivided losses into one step: the gradient is N times too "
        "large; divide the loss by the number of micro-batches before backward"
    )

    def keep(self, model: FileModel, record: Record) -> bool:
        # gradients rescaled by hand anywhere in the loop that steps (``p.grad.mul_(1 / n)``
        # for each parameter that has one) normalise the sum, on every path that steps; and
        # gradients handled by hand (all-reduced with SUM, then a scale-invariant optimizer)
        # are the author's business. Reading them (a norm for the log) normalises nothing.
        if record.root is not None and record.root.unit_test:
            return False  # a test sums undivided gradients on purpose, to compare the sum
        loop = record.loop
        if loop is None:
            return True
        if loop.autograd:
            return False  # meta-learning: the query losses of a batch of tasks, summed by design
        by_hand = loop.has(Move.GRAD_RESCALE, record.key) or loop.grads_rewritten
        opaque = loop.has(Move.OPAQUE, record.key) and not model.apart_from(record, Move.OPAQUE)
        return not by_hand and not opaque
