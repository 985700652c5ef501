"""LC102 zero-grad-after-backward."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from loopcheck.rules._base import Finding, ProtocolRule
from loopcheck.rules._clears import drops_gradients

if TYPE_CHECKING:
    from loopcheck.static.model import FileModel


class ZeroGradAfterBackward(ProtocolRule):
    """## What it does
    Flags a `zero_grad()` placed between `backward()` and `step()`, also between the backward
    of one loss and that of another loss the same step applies (a discriminator cleared after
    its real half's backward: the step applies only the fake half). Looking at the gradients
    in between (a norm for the log, `p.grad is None`) or cleaning them in place
    (`p.grad.clamp_(-1, 1)`, `torch.nan_to_num(p.grad, out=p.grad)`) does not use them up:
    the clear still drops what the step was meant to apply. Gradients taken out by hand
    (copied into a buffer, handed to another process) are the author's business.

    ## Why is this bad?
    The clear wipes the gradients the backward pass just produced, so the step that follows
    applies nothing (or, with `set_to_none=False` and momentum, only stale momentum). The loss
    stays flat and nothing raises.

    ## Example
    ```python
    for x, y in loader:
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.zero_grad()
        optimizer.step()
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

    code = "LC102"
    name = "zero-grad-after-backward"
    summary = "gradients cleared between backward and step"

    message = (
        "`{call}` clears the gradients between `backward()` and `step()`: the step applies "
        "nothing; clear before the forward pass or after the step"
    )

    def check(self, model: FileModel) -> Iterable[Finding]:
        yield from super().check(model)
        # a clear between one loss's backward and another's of the same pass (SRGAN's
        # discriminator cleared after its real half): the step applies only the later ones
        for record in model.violations("LC108"):
            if record.between_losses and drops_gradients(model, record):
                yield self.finding(model, record, self.message.format(call=record.site.text))
