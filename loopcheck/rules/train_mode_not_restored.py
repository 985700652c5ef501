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
    that reaches the next training step of that model (a backward of a loss it computed)
    without `model.train()` in between — typically an evaluation run at the end of each epoch,
    inline or in a helper, while `model.train()` is called only once, before the loop. A path
    that only evaluates (the `"val"` phase of a phase loop) is not a training path. A mode
    saved and restored (`was_training = model.training ... if was_training: model.train()`)
    is restored; after a hook dispatch that may restore it (`fabric.call(...)`) the mode is
    unknown and nothing is reported. Only a call on the model (or, in a module's own method,
    on one of its submodules) restores it: a trainer's `self.criterion.train()` does not.

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
        # the eval() and the backward of a loss of the model in eval mode in one loop that
        # trains (record.loop: the innermost loop around both)
        if record.loop is None or not _trains(record.loop):
            return False
        if record.loop.updates_model(record.key):
            return True  # an optimizer the loop steps trains the model left in eval mode
        # seen only in functions the linted files call, analysed out of context, with the
        # model handed in: their callers, which say what it is (a frozen feature extractor),
        # decide
        return not all(
            r.root is not None and r.root.referenced and r.handed_in
            for r in model.violations(self.code)
            if r.site == record.site
        )

    def related(self, model: FileModel, record: Record) -> None:
        return None


def _trains(loop: LoopSummary) -> bool:
    return bool(loop.backwards or loop.has_any(Move.STEP))
