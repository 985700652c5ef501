"""What the runtime watch reports: a finding, and the wording of each rule it checks.

Pure Python (no torch), so that reports can be read, compared and rendered anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

# code -> (name, what went wrong, how to fix it). Names are the catalog's (DESIGN.md).
RULES: dict[str, tuple[str, str, str]] = {
    "LC101": (
        "missing-zero-grad",
        "step() applied gradients piled up across steps: a backward added to gradients that an "
        "earlier step() had already applied, with no zero_grad() in between",
        "call optimizer.zero_grad() once per optimizer step",
    ),
    "LC102": (
        "zero-grad-after-backward",
        "gradients were cleared between backward() and step(): the step applied nothing",
        "clear gradients before the forward pass or after step(), never between backward() "
        "and step()",
    ),
    "LC103": (
        "step-before-backward",
        "step() ran before this iteration's backward(): it applied stale or no gradients",
        "call step() after backward()",
    ),
    "LC104": (
        "missing-backward",
        "step() keeps running but no backward() ever produced gradients for this optimizer's "
        "parameters",
        "call loss.backward() before optimizer.step()",
    ),
    "LC105": (
        "missing-step",
        "backward() produced gradients for this optimizer's parameters but step() never ran",
        "call optimizer.step() after backward()",
    ),
    "LC106": (
        "clip-after-step",
        "gradients were clipped after step(): clipping had no effect on the update",
        "clip between backward() and step()",
    ),
    "LC107": (
        "clip-before-backward",
        "gradients were clipped before backward() produced them: clipping touched stale or "
        "empty gradients",
        "clip between backward() and step()",
    ),
    "LC108": (
        "zero-grad-in-accumulation",
        "gradients of a backward() that no step() used were cleared and another backward() "
        "followed: only the last micro-batch counts",
        "clear gradients once per optimizer step, not once per micro-batch",
    ),
    "LC201": (
        "unscaled-accumulated-loss",
        "several backward() calls from the same line fed one step() with a loss that was not "
        "divided: the accumulated gradient is N times too large",
        "divide the loss by the number of micro-batches before backward()",
    ),
    "LC202": (
        "scheduler-per-microbatch",
        "the LR scheduler stepped between two micro-batches of one optimizer step: the "
        "schedule advances once per micro-batch instead of once per update",
        "step the scheduler next to optimizer.step(), inside the accumulation guard",
    ),
    "LC203": (
        "clip-per-microbatch",
        "gradients were clipped and then another micro-batch was backpropagated into them: "
        "the clip saw a partial sum",
        "clip once, after the last micro-batch's backward() and before step()",
    ),
    "LC206": (
        "accumulation-not-equivalent",
        "the update from the accumulated micro-batches differs from the full-batch update",
        "make the accumulated loss the full batch's: divide each micro-batch's summed loss by "
        "the whole batch's count (of samples or tokens), not by its own",
    ),
    "LC301": (
        "clip-without-unscale",
        "AMP-scaled gradients were clipped without scaler.unscale_(optimizer) first: max_norm "
        "was compared with scaled gradients",
        "call scaler.unscale_(optimizer) before clipping",
    ),
    "LC302": (
        "step-bypasses-scaler",
        "optimizer.step() ran on gradients of a GradScaler-scaled loss: the update is too "
        "large and inf/NaN steps are not skipped",
        "call scaler.step(optimizer) and scaler.update() instead of optimizer.step()",
    ),
    "LC303": (
        "missing-scaler-update",
        "scaler.step(optimizer) ran and the next iteration began without scaler.update(): "
        "the loss scale never adapts",
        "call scaler.update() after scaler.step(optimizer), every iteration",
    ),
    "LC304": (
        "unscale-per-microbatch",
        "scaler.unscale_(optimizer) ran twice without scaler.update() in between",
        "call scaler.unscale_(optimizer) once per optimizer step, after the last backward()",
    ),
    "LC401": (
        "scheduler-before-optimizer",
        "the LR scheduler stepped before the optimizer in this iteration: the first learning "
        "rate of the schedule is skipped",
        "call scheduler.step() after optimizer.step()",
    ),
    "LC601": (
        "stale-gradients",
        "step() applied gradients that no backward() produced since the previous step()",
        "clear gradients every step and make sure a backward() reaches these parameters "
        "before step()",
    ),
    "LC602": (
        "orphan-gradients",
        "parameters received gradients but belong to no watched optimizer: they are never updated",
        "add them to the optimizer (build it from model.parameters() after the model is final), "
        "or freeze them with requires_grad_(False)",
    ),
    "LC603": (
        "update-not-applied",
        "parameters with a non-zero gradient were not changed by step()",
        "check that the optimizer updates these parameters (param groups, a custom step())",
    ),
    "LC604": (
        "non-finite",
        "NaN or Inf in the training numbers",
        "find the first non-finite value (lower the learning rate, check the data and the loss, "
        "or use a GradScaler with fp16)",
    ),
    "LC605": (
        "clip-ineffective",
        "after clipping, the optimizer's gradient norm still exceeds max_norm",
        "clip the optimizer's own parameters, after the last backward() and just before step()",
    ),
}


@dataclass(frozen=True)
class Finding:
    """One bug seen at run time.

    ``step`` is the index (from 0) of the optimizer step the bug belongs to, counted since the
    watch began; ``optimizer`` the index of the optimizer in the watched list (``None`` when the
    finding belongs to no optimizer); ``file``/``line`` the user's code that made the faulty
    move (empty when unknown).
    """

    code: str
    name: str
    step: int
    message: str
    file: str = ""
    line: int = 0
    optimizer: int | None = None

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.file else ""

    def __str__(self) -> str:
        place = f" at {self.where}" if self.file else ""
        opt = f", optimizer {self.optimizer}" if self.optimizer is not None else ""
        return f"{self.code} {self.name}{place} (step {self.step}{opt}): {self.message}"

    def to_dict(self) -> dict[str, object]:
        return {
            "code": self.code,
            "name": self.name,
            "step": self.step,
            "optimizer": self.optimizer,
            "file": self.file,
            "line": self.line,
            "message": self.message,
        }


def make_finding(
    code: str,
    step: int,
    detail: str = "",
    file: str = "",
    line: int = 0,
    optimizer: int | None = None,
) -> Finding:
    """A finding worded from the catalog; ``detail`` adds what this run saw."""
    name, what, fix = RULES[code]
    message = f"{what}{f' ({detail})' if detail else ''}. Fix: {fix}."
    return Finding(code, name, step, message, file, line, optimizer)
