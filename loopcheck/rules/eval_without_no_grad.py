"""LC502 eval-without-no-grad."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from loopcheck.protocol import Move
from loopcheck.rules._base import Finding, Rule

if TYPE_CHECKING:
    from loopcheck.static.model import FileModel, LoopSummary, RootSummary, Site


class EvalWithoutNoGrad(Rule):
    """## What it does
    Flags an evaluation loop — in a function named for evaluating (`evaluate`, `validate`,
    `test`), or entered with the model in eval mode (`model.eval()` before it, and that model
    or another module put in eval mode runs in the loop) — that runs the
    model forward with gradients on: no `torch.no_grad()` / `torch.inference_mode()` block or
    decorator around it, here or in the caller (a `no_grad` block around another loop of the
    function does not count). Loops that backpropagate, step, take `torch.autograd.grad`
    (MAML, saliency) or hand the model to a call named for training need their gradients and
    are not flagged (a call of a submodule, `model.encoder(x)`, is a forward), nor are forwards
    of a model
    whose own `forward` differentiates (an output found by gradient descent on an energy, a
    differentiable optimizer), that has nothing to train (its modules built frozen, such as
    `Embedding.from_pretrained(..., freeze=True)`), or of a loss class weighing outputs
    computed under `no_grad`.
    It also flags a validation block inside a training loop (`if i % validate_every == 0:
    model.eval(); loss = model(val_batch)`): a call of the model, with gradients on, in an
    `if` block that puts it in eval mode and makes no training move (`generate(...)` and other
    methods, which often turn gradients off themselves, are not judged). A method of a model
    class (an `nn.Module`, or a class defining `forward`), such as a `predict_step` that
    decodes greedily, is an inference API: it is judged where a linted file calls it, since
    its callers choose whether gradients are on.

    ## Why is this bad?
    With gradients on, every forward records its autograd graph and keeps the activations it
    needs: evaluation uses several times the memory it should (often running out of memory on
    the first validation, with a batch size that trains fine) and runs slower. `model.eval()`
    only switches dropout and batch-norm behaviour; it does not turn gradients off.

    ## Example
    ```python
    def evaluate(model, loader):
        model.eval()
        correct = 0
        for x, y in loader:
            logits = model(x)
            correct += (logits.argmax(-1) == y).sum().item()
        return correct
    ```

    ## Use instead
    ```python
    @torch.no_grad()
    def evaluate(model, loader):
        model.eval()
        correct = 0
        for x, y in loader:
            logits = model(x)
            correct += (logits.argmax(-1) == y).sum().item()
        return correct
    ```
    """

    code = "LC502"
    name = "eval-without-no-grad"
    summary = "an evaluation pass (no backward) outside `torch.no_grad()`/`inference_mode()`"

    def check(self, model: FileModel) -> Iterable[Finding]:
        reported: set[object] = set()
        for loop in model.loops:
            if not loop.eval_like or _needs_gradients(loop):
                continue
            if loop.eval_models is not None and not loop.eval_model_ran:
                continue  # entered with some modules in eval mode, none of which runs in it
            decisive = [
                site
                for site, enabled, root, followed in loop.forwards
                if enabled and (root is None or not _callers_decide(root))
            ]
            if not decisive:
                continue  # gradients off, or only seen alone while callers decide
            silenced = any(
                not enabled and followed for _, enabled, _, followed in loop.forwards
            ) and not any(followed for _, enabled, _, followed in loop.forwards if enabled)
            if silenced:
                continue
            site = decisive[0]
            if site in reported:
                continue
            reported.add(site)
            yield _finding(site)
        # an evaluation block inside the training loop (``if i % validate_every == 0:
        # model.eval(); loss = model(val_batch)``): no backward or step in the block
        for site, _, loop, root in model.eval_forwards:
            if site in reported or (root is not None and _callers_decide(root)):
                continue
            if _needs_gradients(loop):
                reported.add(site)
                yield _finding(site)


def _callers_decide(root: RootSummary) -> bool:
    """Whether an analysis seen on its own leaves the question to its callers: it is called
    elsewhere, or it is a method of a model class (an inference API such as ``predict_step``,
    which callers run under ``no_grad`` or not)."""
    return root.model_api or root.referenced


def _finding(site: Site) -> Finding:
    return Finding(
        site.span,
        f"`{site.text}` runs an evaluation forward with gradients on: wrap the "
        "evaluation in `torch.no_grad()` (or `torch.inference_mode()`)",
        site.path,
    )


def _needs_gradients(loop: LoopSummary) -> bool:
    return bool(
        loop.backwards
        or loop.has_any(Move.BACKWARD)
        or loop.has_any(Move.MAYBE_BACKWARD)
        or loop.has_any(Move.STEP)
        or loop.grads_read
        or loop.grads_inspected
        or loop.autograd
        or loop.opaque_training  # a call on the model named for training (not `vae.encode(x)`)
    )
