"""LC303 missing-scaler-update."""

from __future__ import annotations

from loopcheck.rules._base import ProtocolRule


class MissingScalerUpdate(ProtocolRule):
    """## What it does
    Flags a `scaler.step(optimizer)` after which the next iteration begins, on some path, with
    no `scaler.update()`. In an AMP optimizer wrapper class (a GradScaler held by the
    instance, its `step()` called by a framework once per iteration), a scaler step with no
    update of that scaler anywhere in the file is flagged.

    ## Why is this bad?
    `scaler.update()` is what lowers the loss scale after an overflow and raises it again after
    a run of good steps. Without it the scale never adapts: an overflowing scale keeps every
    step skipped (the model stops learning), a too small one underflows fp16 gradients to zero.
    Where a second `scaler.step` follows without update, PyTorch raises only on some versions.

    ## Example
    ```python
    scaler = torch.amp.GradScaler("cuda")
    for x, y in loader:
        optimizer.zero_grad()
        with torch.autocast("cuda"):
            loss = criterion(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
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

    code = "LC303"
    name = "missing-scaler-update"
    summary = "`scaler.step(opt)` without `scaler.update()` on some path of the iteration"

    message = (
        "`{call}` is not followed by `scaler.update()` before the next iteration: the loss "
        "scale never adapts; call `scaler.update()` after every `scaler.step()`"
    )
