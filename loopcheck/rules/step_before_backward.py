"""LC103 step-before-backward."""

from __future__ import annotations

from typing import TYPE_CHECKING

from loopcheck.rules._base import ProtocolRule

if TYPE_CHECKING:
    from loopcheck.static.model import FileModel, Record


class StepBeforeBackward(ProtocolRule):
    """## What it does
    Flags an optimizer `step()` that runs before the iteration's `backward()`, when the
    gradients it reads were cleared or already applied, or come from the last iteration while
    this iteration's loss was computed before the step (a clear placed after the step, or a
    DeepSpeed engine's `step()`, which clears itself, before `engine.backward(loss)`). A step
    at the top of the loop, before the forward, applies the last iteration's gradients to the
    weights the next forward uses: that rotated loop is not flagged.

    ## Why is this bad?
    The step reads `.grad` as it is at that moment: empty right after `zero_grad()`, or the
    previous iteration's gradients. The backward that follows fills
    gradients no step will use before they are cleared. The model does not learn, or learns
    from stale gradients.

    ## Example
    ```python
    for x, y in loader:
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        optimizer.step()
        loss.backward()
    ```

    ## Use instead
    ```python
    for x, y in loader:
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
    ```
    """

    code = "LC103"
    name = "step-before-backward"
    summary = "step reached before this iteration's backward"

    message = (
        "`{call}` runs before this iteration's `backward()`: it applies cleared, "
        "already-applied or the last iteration's gradients; step after backward"
    )

    def keep(self, model: FileModel, record: Record) -> bool:
        # one finding per place: a step whose own backward is missing on other paths (its
        # loss computed and dropped) is LC104's
        return not any(other.site == record.site for other in model.violations("LC104"))
