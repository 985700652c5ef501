"""LC304 unscale-per-microbatch."""

from __future__ import annotations

from loopcheck.rules._base import ProtocolRule


class UnscalePerMicrobatch(ProtocolRule):
    """## What it does
    Flags a `scaler.unscale_(optimizer)` that can run a second time before `scaler.update()`:
    typically once per micro-batch of a gradient-accumulation step, or inside a loss-scaler
    helper called on every micro-batch. A loss-scaler class whose call unscales outside the
    test that decides whether it updates (`if update_grad:`) is flagged even linted alone.

    ## Why is this bad?
    `unscale_` divides the optimizer's gradients by the scale and records that it did. A second
    call before `update()` raises `RuntimeError: unscale_() has already been called on this
    optimizer since the last update()` — after hours of training, on the first accumulation step
    — or, where the call is guarded differently, divides gradients of later micro-batches twice.

    ## Example
    ```python
    for step, (x, y) in enumerate(loader):
        with torch.autocast("cuda"):
            loss = criterion(model(x), y) / accum
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        if (step + 1) % accum == 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
    ```

    ## Use instead
    ```python
    for step, (x, y) in enumerate(loader):
        with torch.autocast("cuda"):
            loss = criterion(model(x), y) / accum
        scaler.scale(loss).backward()
        if (step + 1) % accum == 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
    ```
    """

    code = "LC304"
    name = "unscale-per-microbatch"
    summary = "`scaler.unscale_(opt)` reachable twice before `scaler.update()`"

    message = (
        "`{call}` can run twice before `scaler.update()` (a second unscale on the path, or "
        "one per micro-batch): it raises at "
        "run time; unscale once per optimizer step, right before clipping"
    )
