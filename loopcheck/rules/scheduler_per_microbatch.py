"""LC202 scheduler-per-microbatch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from loopcheck.rules._base import ProtocolRule

if TYPE_CHECKING:
    from loopcheck.static.model import FileModel, Record


class SchedulerPerMicrobatch(ProtocolRule):
    """## What it does
    Flags an LR scheduler stepped between two micro-batches of one gradient-accumulation step:
    outside the step guard of a flat loop, or inside the micro-batch loop. Inside
    `with accelerator.accumulate(model):` a scheduler handed to `accelerator.prepare` steps
    only when gradients sync; one the accelerator was never handed steps on every micro-batch.
    A scheduler told its position (`lr_scheduler.step(cur_epoch=epoch, cur_step=i)`,
    `scheduler.step(epoch)`) sets the rate for that position however often it is called, and
    is not flagged.

    ## Why is this bad?
    The schedule is written in optimizer steps (warmup steps, total steps, cosine period). Stepped
    once per micro-batch, it runs N times too fast: warmup ends early, the learning rate decays
    to its floor after 1/N of training, and a restart schedule restarts N times too often.
    Nothing raises.

    ## Example
    ```python
    for step, batch in enumerate(loader):
        loss = model(batch).mean() / accum
        loss.backward()
        if (step + 1) % accum == 0:
            optimizer.step()
            optimizer.zero_grad()
        scheduler.step()
    ```

    ## Use instead
    ```python
    for step, batch in enumerate(loader):
        loss = model(batch).mean() / accum
        loss.backward()
        if (step + 1) % accum == 0:
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
    ```
    """

    code = "LC202"
    name = "scheduler-per-microbatch"
    summary = "LR scheduler stepped once per micro-batch instead of once per optimizer step"

    message = (
        "`{call}` steps the LR schedule between micro-batches of one optimizer step: the "
        "schedule runs N times too fast; step it next to `optimizer.step()`"
    )

    def keep(self, model: FileModel, record: Record) -> bool:
        return record.root is None or record.root.stepped  # no step at all is LC105's
