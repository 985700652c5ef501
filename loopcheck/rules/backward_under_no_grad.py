"""LC504 backward-under-no-grad."""

from __future__ import annotations

from loopcheck.rules._base import ProtocolRule


class BackwardUnderNoGrad(ProtocolRule):
    """## What it does
    Flags a `backward()` inside a `torch.no_grad()` / `torch.inference_mode()` block (or a
    function decorated with one) whose loss is computed in that same block. A backward of a
    loss computed before the block is fine and is not flagged.

    ## Why is this bad?
    Under `no_grad` no graph is recorded, so the loss has nothing to backpropagate through:
    PyTorch raises `element 0 of tensors does not require grad` — and code that silences the
    error with `loss.requires_grad_()` runs on, while no parameter ever gets a gradient and the
    optimizer steps change nothing.

    ## Example
    ```python
    for x, y in loader:
        optimizer.zero_grad()
        with torch.no_grad():
            loss = criterion(model(x), y)
            loss.requires_grad_()
            loss.backward()
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

    code = "LC504"
    name = "backward-under-no-grad"
    summary = "backward inside a `torch.no_grad()` block"

    message = (
        "`{call}` backpropagates a loss computed under `no_grad`: no graph was recorded, the "
        "parameters get no gradient; compute the loss with gradients enabled"
    )
