"""LC102 zero-grad-after-backward."""

from __future__ import annotations

from loopcheck.rules._base import ProtocolRule


class ZeroGradAfterBackward(ProtocolRule):
    """## What it does
    Flags a `zero_grad()` placed between `backward()` and `step()`.

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
