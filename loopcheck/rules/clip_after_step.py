"""LC106 clip-after-step."""

from __future__ import annotations

from loopcheck.rules._base import ProtocolRule


class ClipAfterStep(ProtocolRule):
    """## What it does
    Flags gradient clipping (`clip_grad_norm_`, `clip_grad_value_`) placed after the
    optimizer's `step()`.

    ## Why is this bad?
    The step has already applied the unclipped gradients; clipping afterwards changes gradients
    nobody reads again. Exploding gradients go through unchecked while the code looks safe.

    ## Example
    ```python
    import torch

    for x, y in loader:
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
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

    code = "LC106"
    name = "clip-after-step"
    summary = "clipping after step has no effect on the update"

    message = (
        "`{call}` clips after `step()`: the update already used the unclipped gradients; "
        "clip between backward and step"
    )
