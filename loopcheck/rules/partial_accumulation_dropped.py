"""LC205 partial-accumulation-dropped."""

from __future__ import annotations

from typing import TYPE_CHECKING

from loopcheck.rules._base import ProtocolRule
from loopcheck.rules._clears import steps_around

if TYPE_CHECKING:
    from loopcheck.static.model import FileModel, Record


class PartialAccumulationDropped(ProtocolRule):
    """## What it does
    Flags a `zero_grad()` outside a flat accumulation loop (typically at the start of each
    epoch) that clears the gradients of a trailing partial accumulation window: the last
    micro-batches of the previous epoch, when the number of batches is not a multiple of the
    accumulation count, were backpropagated but never stepped. Off by default: some training
    code drops them on purpose.

    ## Why is this bad?
    Those micro-batches cost their forward and backward passes and are thrown away, every epoch:
    with small datasets or large accumulation counts a noticeable share of the data never trains
    the model. A final flush (`or step + 1 == len(loader)` in the guard) applies them.

    ## Example
    ```python
    for epoch in range(epochs):
        optimizer.zero_grad()
        for step, batch in enumerate(loader):
            loss = model(batch).mean() / accum
            loss.backward()
            if (step + 1) % accum == 0:
                optimizer.step()
                optimizer.zero_grad()
    ```

    ## Use instead
    ```python
    for epoch in range(epochs):
        optimizer.zero_grad()
        for step, batch in enumerate(loader):
            loss = model(batch).mean() / accum
            loss.backward()
            if (step + 1) % accum == 0 or step + 1 == len(loader):
                optimizer.step()
                optimizer.zero_grad()
    ```
    """

    code = "LC205"
    name = "partial-accumulation-dropped"
    summary = "gradients of a trailing partial accumulation cleared without a step"
    default_enabled = False

    message = (
        "`{call}` clears the gradients of the previous epoch's last micro-batches, which were "
        "never stepped: flush the partial accumulation with a step at the end of the epoch"
    )

    def check(self, model: FileModel):  # type: ignore[no-untyped-def]
        for record in model.violations("LC108"):
            if self.keep(model, record):
                message = self.message.format(call=record.site.text)
                yield self.finding(model, record, message)

    def keep(self, model: FileModel, record: Record) -> bool:
        if record.root is not None and not record.root.stepped:
            return False
        loop = model.innermost_loop(record.cause) if record.cause is not None else None
        if loop is None or record.site in loop.sites:
            return False  # cleared inside the micro-batch loop: LC108
        if loop.flushes:
            return False
        return steps_around(loop, record.key)
