"""LC204 accumulation-off-by-one."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from loopcheck.rules._base import Finding, ProtocolRule

if TYPE_CHECKING:
    from loopcheck.static.model import FileModel


class AccumulationOffByOne(ProtocolRule):
    """## What it does
    Flags a step guard on a counter, tested after the micro-batch's backward, that steps after
    the wrong micro-batch: `i % N == 0` on a 0-based counter (`enumerate`, `range`, a counter
    incremented after the test) steps after the very first micro-batch, then every N; and an
    inverted guard (the step in the branch taken on N-1 of N micro-batches) steps almost always,
    whatever the counter's base (ignite's 1-based `engine.state.iteration` included).
    The counter may be the loop's (`enumerate`, also behind a progress bar), one derived from it
    (`ni = i + nb * epoch`), one kept by hand in a name, an attribute or a state dict
    (`self.step`, `state["iter_num"]`, set to 0 where it is built), or one kept wrapped
    (`acc = (acc + 1) % N`, then `acc == 0`). A modulus recomputed from the counter itself (a
    warm-up that ramps `accumulate` from 1 at the first micro-batch) is a schedule whose first
    window is meant to be short: not reported.
    The guard is read wherever the step's condition comes from: the `if` itself (`or` a
    last-batch flush included, or a switch that turns accumulation off: `not args.accum or
    step % args.accum == 0`), `if i % N != 0: continue` before the step, a flag computed
    earlier in the iteration (`need_update = last_batch or i % N == 0`), or a condition handed
    to a helper that steps when it is set (`loss_scaler(..., update_grad=i % N == 0)`); the
    finding is at the condition. An inverted guard read through a flag whose name says what
    it means is reported where it goes wrong: at `if is_accumulating:` when that branch steps,
    at the flag's computation when the usual `if not is_accumulating:` reads a flag computed
    the wrong way round.

    ## Why is this bad?
    The first optimizer step applies one micro-batch instead of N (with the loss divided by N,
    a step N times too small), every later window is shifted by one, and the trailing partial
    window is silently different from what the configuration says. An inverted guard turns
    accumulation into near per-micro-batch updates. Nothing raises.

    ## Example
    ```python
    for step, batch in enumerate(loader):
        loss = model(batch).mean() / accum
        loss.backward()
        if step % accum == 0:
            optimizer.step()
            optimizer.zero_grad()
    ```

    ## Use instead
    ```python
    for step, batch in enumerate(loader):
        loss = model(batch).mean() / accum
        loss.backward()
        if (step + 1) % accum == 0:
            optimizer.step()
            optimizer.zero_grad()
    ```
    """

    code = "LC204"
    name = "accumulation-off-by-one"
    summary = "step guard `i % N == 0` on a 0-based counter tested after backward, or inverted"

    message = (
        "`{call}` is an accumulation step guard off by one: tested after the backward on a "
        "0-based counter it steps after the first micro-batch (or on N-1 of N); use "
        "`(i + 1) % N == 0`"
    )
    inverted = (
        "`{call}` inverts the accumulation step guard: the step runs on N-1 of N micro-batches "
        "and skips the one that ends the window; negate the test"
    )

    def check(self, model: FileModel) -> Iterable[Finding]:
        for record in model.violations(self.code):
            template = self.inverted if record.inverted else self.message
            yield self.finding(model, record, template.format(call=record.site.text))
