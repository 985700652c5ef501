"""LC503 train-mode-not-restored."""

from __future__ import annotations

from typing import TYPE_CHECKING

from loopcheck.protocol import Move
from loopcheck.rules._base import ProtocolRule

if TYPE_CHECKING:
    from loopcheck.static.model import FileModel, LoopSummary, Record


class TrainModeNotRestored(ProtocolRule):
    """## What it does
    Flags a `model.eval()` (or `model.train(False)`) reachable inside a training loop, on a path
    that reaches the next training forward of that model without `model.train()` in between —
    typically an evaluation run in the middle of each epoch, while `model.train()` is called
    only once, before the loop.

    ## Why is this bad?
    In eval mode dropout is off and batch normalisation uses its running statistics instead of
    the batch's, and stops updating them: from the first evaluation on, the model trains without
    regularisation and with frozen normalisation statistics. The loss goes on decreasing, more
    slowly, and the final model is worse. Nothing raises.

    ## Example
    ```python
    model.train()
    for epoch in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            criterion(model(x), y).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            accuracy = evaluate(model, val_loader)
    ```

    ## Use instead
    ```python
    for epoch in range(epochs):
        model.train()
        for x, y in loader:
            optimizer.zero_grad()
            criterion(model(x), y).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            accuracy = evaluate(model, val_loader)
    ```
    """

    code = "LC503"
    name = "train-mode-not-restored"
    summary = "`model.eval()` in the training loop with no `model.train()` before the next forward"

    message = (
        "`{call}` leaves the model in eval mode for the next training forward (dropout off, "
        "batch-norm statistics frozen): call `model.train()` before training again"
    )

    def keep(self, model: FileModel, record: Record) -> bool:
        forward_loop = model.innermost_loop(record.cause) if record.cause is not None else None
        if forward_loop is None or not any(
            model.innermost_loop(site) is forward_loop for site in forward_loop.backwards
        ):
            return False  # an evaluation forward: no backward in its own loop
        loop: LoopSummary | None = forward_loop
        while loop is not None and record.site not in loop.sites:
            loop = loop.parent
        # the eval() and the training forward in one loop that trains
        return loop is not None and _trains(loop)

    def related(self, model: FileModel, record: Record) -> None:
        return None


def _trains(loop: LoopSummary) -> bool:
    return bool(loop.backwards or loop.has_any(Move.STEP))
