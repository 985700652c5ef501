"""LC105 missing-step."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from loopcheck.protocol import Move
from loopcheck.rules._base import Finding, Rule

if TYPE_CHECKING:
    from loopcheck.static.model import FileModel, LoopSummary, RootSummary, Site


class MissingStep(Rule):
    """## What it does
    Flags a loop that calls `backward()` while an optimizer is at hand, but never steps it
    (anywhere in the function). With several optimizers (a GAN, an actor and a critic), it
    also flags one that the loop clears and that a backward certainly feeds, but that never
    steps while the others do.

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
        # reported once per loop: at an explicit ``backward()`` rather than at a call that runs
        # one (a pipeline schedule's ``step(...)``) when the loop has both
        ordered = sorted(contexts.items(), key=lambda item: ".backward(" not in item[0].text)
        for site, seen in ordered:
            if any(
                (root.stepped and not model.steps_elsewhere(root, loop)) or loop.grads_read
                for root, loop, _ in seen
            ):
                # stepped somewhere in the loop: unless only on paths of a run-long choice
                # that this backward's paths exclude, as the callers' contexts see them
                deciding = [c for c in seen if not c[0].referenced] or seen
                if any(
                    (root.stepped or loop.grads_read)
                    and not model.apart_from_steps(root, loop, site)
                    for root, loop, _ in deciding
                ):
                    continue
            clears = _clears_unstepped(model, seen)
            if all(root.referenced for root, _, _ in seen) and not clears:
                continue  # only ever seen out of context: its caller may step
            if not any(in_scope for _, _, in_scope in seen) and not clears:
                continue  # an optimizer whose updates some other code (a base class) owns
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
        yield from self.unstepped_optimizers(model, reported)

    def unstepped_optimizers(self, model: FileModel, reported: set[int]) -> Iterable[Finding]:
        """Other optimizers step, but one that the loop clears and that a backward certainly
        feeds never does (a GAN whose generator is never stepped): reported once, at the
        backward that feeds it most specifically."""
        contexts: dict[tuple[Site, str], list[tuple[RootSummary, LoopSummary | None]]] = {}
        # preferred: a backward whose gradients for it are not cleared unused (the GAN's
        # generator loss, not the discriminator loss that also reached the generator), right
        # after the optimizer's clear, feeding the fewest others
        rank: dict[tuple[Site, str], tuple[bool, bool, int]] = {}
        for root in model.roots:
            for bound, (loop, n, cleared, owned) in root.bound_backwards.items():
                if not owned and not root.steps_siblings(bound[1]):
                    loop = None  # a sibling method or a base class may step it
                contexts.setdefault(bound, []).append((root, loop))
                known = rank.get(bound, (False, True, 0))
                dropped = known[0] or bound in root.dropped
                rank[bound] = (dropped, known[1] and not cleared, max(n, known[2]))
        best: dict[tuple[int, str], tuple[tuple[bool, bool, int, int, int], Site]] = {}
        for (site, key), seen in contexts.items():
            if any(
                loop is None
                or key in root.stepped_keys
                or root.stepped_unkeyed
                or not root.stepped
                or loop.grads_read
                or not loop.has(Move.ZERO, key)
                for root, loop in seen
            ):
                continue
            if all(root.referenced for root, _ in seen):
                continue
            loop = seen[0][1]
            assert loop is not None
            if id(loop) in reported:
                continue  # the loop steps nothing at all: reported above
            order = (*rank[(site, key)], site.span.line, site.span.column)
            slot = (id(loop), key)
            if slot not in best or order < best[slot][0]:
                best[slot] = (order, site)
        for (_, key), (_, site) in sorted(best.items(), key=lambda item: item[1][0][3:]):
            name = key.rpartition(":")[2]
            owner, dot, attr = name.partition(".")
            if dot and owner[:1].isupper():
                name = f"self.{attr}"  # held by an instance: ``SACTrainer.qf2_optimizer``
            yield Finding(
                site.span,
                f"`{site.text}` computes gradients for `{name}`, which is cleared but never "
                f"steps while the other optimizers do: call `{name}.step()` after backward",
                site.path,
            )


def _clears_unstepped(model: FileModel, seen: list[tuple[RootSummary, LoopSummary, bool]]) -> bool:
    """Whether the loop clears, on every iteration, an optimizer that nothing in the file
    ever steps: whoever calls it (a base class elsewhere) could step only after the loop,
    too late for what each iteration's clear drops (an RL algorithm's ``train()`` that lost
    its step)."""
    stepped: set[str] = set()
    for root in model.roots:
        if root.stepped_unkeyed:
            return False
        stepped |= root.stepped_keys
    return any(key not in stepped for _, loop, _ in seen for key in loop.unguarded_clears)
