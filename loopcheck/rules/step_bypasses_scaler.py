"""LC302 step-bypasses-scaler."""

from __future__ import annotations

from loopcheck.rules._base import ProtocolRule


class StepBypassesScaler(ProtocolRule):
    """## What it does
    Flags `optimizer.step()` called directly on gradients of a loss scaled by a GradScaler
    (`scaler.scale(loss).backward()`), instead of `scaler.step(optimizer)`. A scaler that is a
    real GradScaler on one branch and a do-nothing stand-in on the other (AMP optional) counts
    as a GradScaler: on the AMP path the bypass is wrong. In an AMP optimizer wrapper class
    whose methods scale the loss, a `self.optimizer.step()` with no scaler step anywhere in
    the class is flagged.

    ## Why is this bad?
    The gradients are still multiplied by the scale factor (2**16 at the start): the update is
    that many times too large, and the steps whose gradients overflowed to inf/NaN — which
    `scaler.step` would skip — are applied and poison the weights. Without `scaler.update()`
    the scale never adapts either.

    ## Example
    ```python
    scaler = torch.amp.GradScaler("cuda")
    for x, y in loader:
        optimizer.zero_grad()
        with torch.autocast("cuda"):
            loss = criterion(model(x), y)
        scaler.scale(loss).backward()
        optimizer.step()
    ```

    ## Use instead
    ```python
    scaler = torch.amp.GradScaler("cuda")
    for x, y in loader:
        optimizer.zero_grad()
        with torch.autocast("cuda"):
            loss = criterion(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    ```
    """

    code = "LC302"
    name = "step-bypasses-scaler"
    summary = "`opt.step()` called directly although the loss was scaled by a GradScaler"

    message = (
        "`{call}` applies GradScaler-scaled gradients directly: the update is multiplied by the "
        "loss scale and overflowed steps are not skipped; use `scaler.step(optimizer)`"
    )
