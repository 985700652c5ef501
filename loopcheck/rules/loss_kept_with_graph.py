"""LC501 loss-kept-with-graph."""

from __future__ import annotations

from loopcheck.rules._base import ProtocolRule


class LossKeptWithGraph(ProtocolRule):
    """## What it does
    Flags a loss tensor summed across iterations (`total_loss += loss`, `total = total + loss`)
    or collected in a list (`losses.append(loss)`) with its autograd graph, without `.item()`,
    `.detach()` or `float()`, when that total is never backpropagated. The tensor added is a
    loss with a graph when a model's forward reaches it, through helpers of the linted files,
    or when it is the very tensor a backward of the iteration was given. Unit tests (`test_*`
    functions, methods of `Test*` classes) are not flagged: they run a handful of steps and
    keep the losses to compare them. A meter counts as such a
    total: `losses.update(loss, n)` on an instance of a class of the linted files whose
    `update` adds its argument to an attribute (`self.sum += val * n`) as it is.

    ## Why is this bad?
    A tensor that comes out of a forward pass holds its whole autograd graph: every activation
    the backward would need. Adding it to a running total keeps every iteration's graph alive,
    so memory grows step after step until the run dies with an out-of-memory error hours in —
    or runs slower and slower. A differentiable total that is backpropagated afterwards is
    correct and is not flagged.

    ## Example
    ```python
    total_loss = 0
    for x, y in loader:
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        total_loss += loss
    ```

    ## Use instead
    ```python
    total_loss = 0
    for x, y in loader:
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        total_loss += loss.item()
    ```
    """

    code = "LC501"
    name = "loss-kept-with-graph"
    summary = "a loss tensor summed across iterations without `.item()`/`.detach()`"

    message = (
        "`{call}` keeps every iteration's autograd graph alive (memory grows each step): add "
        "`loss.item()` or `loss.detach()` instead"
    )
