"""LC105 missing-step."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from loopcheck.rules._base import Finding, Rule

if TYPE_CHECKING:
    from loopcheck.static.model import FileModel, LoopSummary, RootSummary, Site


class MissingStep(Rule):
    """## What it does
    Flags a loop that calls `backward()` while an optimizer is at hand, but never steps it
    (anywhere in the function).

    ## Why is this bad?
    Gradients are computed and never applied: the parameters never change, the loss never
    moves, and every backward pass is wasted time.

    ## Example
    ```python
    def train(model, optimizer, loader):
        for x, y in loader:
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
    ```

    ## Use instead
    ```python
    def train(model, optimizer, loader):
        for x, y in loader:
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
    ```
    """

    code = "LC105"
    name = "missing-step"
    summary = "the loop calls backward but never steps"

    def check(self, model: FileModel) -> Iterable[Finding]:
        # A backward is judged in every context it was seen in: its own function analysed
        # alone, and each caller that follows into it. A context that steps clears it.
        contexts: dict[Site, list[tuple[RootSummary, LoopSummary, bool]]] = {}
        for root in model.roots:
            for site, loop, optimizer_in_scope in root.backwards_in_loops:
                contexts.setdefault(site, []).append((root, loop, optimizer_in_scope))
        reported: set[int] = set()
        for site, seen in contexts.items():
            if any(root.stepped or loop.grads_read for root, loop, _ in seen):
                continue
            if all(root.referenced for root, _, _ in seen):
                continue  # only ever seen out of context: its caller may step
            if not any(in_scope for _, _, in_scope in seen):
                continue
            loop = seen[0][1]
            if id(loop) in reported:
                continue
            reported.add(id(loop))
            yield Finding(
                site.span,
                f"`{site.text}` computes gradients that no optimizer step ever applies: "
                "call `optimizer.step()` after backward",
                site.path,
            )
