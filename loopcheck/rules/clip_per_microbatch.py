"""LC203 clip-per-microbatch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from loopcheck.rules._base import ProtocolRule

if TYPE_CHECKING:
    from loopcheck.static.model import FileModel, Record


class ClipPerMicrobatch(ProtocolRule):
    """## What it does
    Flags gradient clipping that runs after a micro-batch's backward while more micro-batches
    of the same optimizer step follow: outside the step guard of a flat accumulation loop, or
    inside the micro-batch loop.

    ## Why is this bad?
    Clipping is meant for the gradient the step applies: the sum over all micro-batches. Clipped
    after each one, partial sums are rescaled and later micro-batches are added unclipped, so the
    final norm can exceed `max_norm` and early micro-batches are down-weighted. Nothing raises.

    ## Example
    ```python
    for step, batch in enumerate(loader):
        loss = model(batch).mean() / accum
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if (step + 1) % accum == 0:
            optimizer.step()
            optimizer.zero_grad()
    ```

    ## Use instead
    ```python
    for step, batch in enumerate(loader):
        loss = model(batch).mean() / accum
        loss.backward()
        if (step + 1) % accum == 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
    ```
    """

    code = "LC203"
    name = "clip-per-microbatch"
    summary = "gradients clipped after every micro-batch, outside the step guard"

    message = (
        "`{call}` clips a partial sum of micro-batch gradients: later micro-batches add "
        "unclipped gradients; clip once, right before the step"
    )

    def keep(self, model: FileModel, record: Record) -> bool:
        # one finding per place: a clip before the backward is LC107 first
        return not any(other.site == record.site for other in model.violations("LC107"))
