"""LC105 missing-step."""

from __future__ import annotations

from collections.abc import Iterable

from loopcheck.rules._base import Finding, Rule
from loopcheck.static.model import FileModel


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
        for root in model.roots:
            if root.stepped or root.referenced or not root.optimizer_in_scope:
                continue
            reported = set()
            for site, loop in root.backwards_in_loops:
                if id(loop) in reported or loop.grads_read:
                    continue
                reported.add(id(loop))
                yield Finding(
                    site.span,
                    f"`{site.text}` computes gradients that no optimizer step ever applies: "
                    "call `optimizer.step()` after backward",
                )
