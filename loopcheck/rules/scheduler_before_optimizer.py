"""LC401 scheduler-before-optimizer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from loopcheck.rules._base import ProtocolRule

if TYPE_CHECKING:
    from loopcheck.static.model import FileModel, Record


class SchedulerBeforeOptimizer(ProtocolRule):
    """## What it does
    Flags an LR scheduler stepped before the optimizer's step of the same iteration: after
    this iteration's backward, or before any gradient at all — at the top of the epoch loop,
    before the epoch's training (the habit of PyTorch before 1.1). A scheduler told its
    position (`scheduler.step(epoch)`, `step(cur_epoch=e, cur_step=i)`) is not shifted by when
    it is called and is not flagged; one told a metric is not flagged at the epoch's top. A
    schedule returned together with its optimizer by one call (`optimizer, scheduler =
    make_optimizer(cfg, model)`) schedules that optimizer. A scheduler class of the linted
    files whose `step()` reads its position from the optimizer's own step count
    (`self.last_epoch = group["step"] + 1`) instead of counting its calls sets the rate of the
    next step whenever it is called: it is not flagged.

    ## Why is this bad?
    Since PyTorch 1.1 a scheduler's `step()` moves to the next learning rate for the *next*
    optimizer step. Called first, the step that follows already uses the second learning rate:
    the first value of the schedule (often the warmup's start) is skipped, and with per-epoch
    schedules every epoch trains at the next epoch's rate. PyTorch only warns once.

    ## Example
    ```python
    for x, y in loader:
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        scheduler.step()
        optimizer.step()
    ```

    ## Use instead
    ```python
    for x, y in loader:
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        scheduler.step()
    ```
    """

    code = "LC401"
    name = "scheduler-before-optimizer"
    summary = "`scheduler.step()` before `optimizer.step()` in the iteration"

    message = (
        "`{call}` steps the LR schedule before `optimizer.step()`: the first learning rate of "
        "the schedule is skipped; step the scheduler after the optimizer"
    )

    def keep(self, model: FileModel, record: Record) -> bool:
        # one finding per place: a scheduler stepped per micro-batch is LC202 (once per window
        # it also comes before the step)
        return not any(other.site == record.site for other in model.violations("LC202"))
