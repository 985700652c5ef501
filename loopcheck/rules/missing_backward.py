"""LC104 missing-backward."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from loopcheck.protocol import Move
from loopcheck.rules._base import Finding, Rule

if TYPE_CHECKING:
    from loopcheck.static.model import FileModel


class MissingBackward(Rule):
    """## What it does
    Flags a loop that computes a loss and steps an optimizer but never calls `backward()`, and
    a step of an optimizer that the loop clears but that none of its backward calls reaches
    (each loss traced to other models: a GAN whose generator loss lost its backward), or that
    steps right after its clear when the only backward reaching it afterwards is another
    optimizer's loss (a GAN whose discriminator loss lost its backward), or that steps right
    after a clear on every path, with no backward between (SAM's `second_step()` after
    `first_step(zero_grad=True)` when the second loss lost its backward). A call the linter
    cannot see that is handed the model and named as if it trained it excuses the loop; one
    that only toggles something (`disable_running_stats(model)`) does not, nor, in a loop
    that computes its own loss, one that only runs a model (`vae.encode(x)`, a pipeline built
    `from_pretrained` for sample images).

    ## Why is this bad?
    Without a backward pass no gradient is ever produced: `step()` finds `.grad` empty and
    changes nothing. The loss is computed, logged and stays where it is.

    ## Example
    ```python
    for x, y in loader:
        optimizer.zero_grad()
        loss = criterion(model(x), y)
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

    code = "LC104"
    name = "missing-backward"
    summary = "the loop computes a loss and steps but never calls backward"

    def check(self, model: FileModel) -> Iterable[Finding]:
        seen = set()
        for finding in self._findings(model):
            if (finding.path, finding.span) not in seen:
                seen.add((finding.path, finding.span))
                yield finding

    def _findings(self, model: FileModel) -> Iterable[Finding]:
        for record in model.violations(self.code):
            # a step on cleared gradients that only another optimizer's loss reaches later
            yield Finding(
                record.site.span,
                f"`{record.site.text}` steps right after its clear, and no backward of its own "
                "loss reaches it (at most another optimizer's, after the step): the step "
                "changes nothing",
                record.site.path,
            )
        for site, loop in model.steps_only_cleared():
            if loop.grads_read or loop.grads_inspected:
                continue
            if loop.opaque_training and not any(
                loop.steps_apart_from_opaque(key) for key, at in loop.steps.items() if at == site
            ):
                continue  # unseen code that may train the model, on this step's paths too
            if len(loop.steps) != 1 or not (loop.forward or loop.loss_assigned):
                # with several optimizers, a backward bound to the others may still reach
                # this one's parameters (an RL encoder fed by the critic's loss); without a
                # forward seen, the model runs where we cannot see (Megatron's schedules)
                continue
            # a SAM loop whose second forward lost its backward: `first_step(zero_grad=True)`
            # cleared, and `second_step()` finds nothing to apply
            yield Finding(
                site.span,
                f"`{site.text}` steps right after its clear, with no backward between: the "
                "step changes nothing",
                site.path,
            )
        for loop in model.loops:
            if loop.opaque_training or loop.grads_read or loop.grads_inspected:
                continue
            if loop.opaque_model and not loop.loss_assigned:
                # the model handed to code we cannot see, and no loss of the loop's own
                continue
            if not (loop.forward or loop.loss_assigned):
                continue
            if loop.backwards or loop.has_any(Move.BACKWARD) or loop.has_any(Move.MAYBE_BACKWARD):
                # backward calls, but maybe none for some optimizer: a GAN whose generator
                # loss lost its backward steps the generator on nothing
                yield from self._unfed(model, loop)
                continue
            for key, site in loop.steps.items():
                if loop.has(Move.OPAQUE, key):
                    continue
                if _inner_loop_owns(model, loop, key):
                    continue
                yield Finding(
                    site.span,
                    f"`{site.text}` steps, but this loop never calls `backward()`: "
                    "no gradient is produced, the step changes nothing",
                    site.path,
                )

    def _unfed(self, model: FileModel, loop) -> Iterable[Finding]:
        """Steps of an optimizer that no backward of the loop reaches, each for certain: its
        model runs forward in the loop, and every loss's origin is known to lie elsewhere."""
        for key, site in loop.steps.items():
            if loop.has(Move.BACKWARD, key) or loop.has(Move.MAYBE_BACKWARD, key):
                continue
            if loop.has(Move.OPAQUE, key) or not loop.has(Move.ZERO, key):
                continue
            if not loop.runs_forward(key):
                continue  # its model is known under another name, or not at all: unsure
            if _inner_loop_owns(model, loop, key):
                continue
            yield Finding(
                site.span,
                f"`{site.text}` steps, but no backward of this loop reaches its parameters: "
                "its gradients stay cleared, the step changes nothing",
                site.path,
            )


def _inner_loop_owns(model: FileModel, loop, key: str) -> bool:
    """Report a step once, in the innermost loop that holds it."""
    return any(
        other.parent is loop and key in other.steps and other.steps[key] == loop.steps[key]
        for other in model.loops
    )
