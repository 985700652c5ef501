"""LC107 clip-before-backward."""

from __future__ import annotations

from loopcheck.rules._base import ProtocolRule


class ClipBeforeBackward(ProtocolRule):
    """## What it does
    Flags gradient clipping placed before the iteration's `backward()`.

    ## Why is this bad?
    Before backward, `.grad` holds nothing (just cleared) or the previous, already applied
    gradients. Clipping them does nothing to the gradients the step will use, which are
    produced afterwards and reach the step unclipped.

    ## Example
    ```python
    import torch

    for x, y in loader:
        optimizer.zero_grad()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
    ```

    ## Use instead
    ```python
    import torch

    for x, y in loader:
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    ```
    """

    code = "LC107"
    name = "clip-before-backward"
    summary = "clipping before backward clips stale or empty gradients"

    message = (
        "`{call}` clips before this iteration's `backward()`: it clips empty or stale "
        "gradients; clip between backward and step"
    )
