"""LC301 clip-without-unscale."""

from __future__ import annotations

from loopcheck.rules._base import ProtocolRule


class ClipWithoutUnscale(ProtocolRule):
    """## What it does
    Flags gradient clipping between `scaler.scale(loss).backward()` and `scaler.step(optimizer)`
    with no `scaler.unscale_(optimizer)` before it. Clipping through a framework that unscales
    first (`accelerator.clip_grad_norm_`, `fabric.clip_gradients`, Lightning's
    `self.clip_gradients`) and scalers built with `enabled=False` are not flagged. In an AMP
    optimizer wrapper class (a GradScaler held by the instance, the loss scaled in one method,
    the clip in another, each called by a framework in turn), a clip with no unscale anywhere
    in the class is flagged.

    ## Why is this bad?
    A GradScaler multiplies the loss, hence every gradient, by a large scale factor (2**16 at
    the start). Clipped before unscaling, the norm compared with `max_norm` is the scaled one:
    every step is clipped to a tiny update once the scale factor is unscaled, or clipping never
    triggers at all when the scale shrinks. Training quietly stalls or explodes.

    ## Example
    ```python
    scaler = torch.amp.GradScaler("cuda")
    for x, y in loader:
        optimizer.zero_grad()
        with torch.autocast("cuda"):
            loss = criterion(model(x), y)
        scaler.scale(loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
    ```

    ## Use instead
    ```python
    scaler = torch.amp.GradScaler("cuda")
    for x, y in loader:
        optimizer.zero_grad()
        with torch.autocast("cuda"):
            loss = criterion(model(x), y)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
    ```
    """

    code = "LC301"
    name = "clip-without-unscale"
    summary = "clipping AMP-scaled gradients without `scaler.unscale_(opt)` first"

    message = (
        "`{call}` clips gradients that are still multiplied by the GradScaler's scale: call "
        "`scaler.unscale_(optimizer)` before clipping"
    )
