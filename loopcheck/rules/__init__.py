"""The rule registry: one module per rule, named after the rule."""

from __future__ import annotations

from loopcheck.rules._base import SECTIONS, Finding, Rule, Span
from loopcheck.rules.accumulation_off_by_one import AccumulationOffByOne
from loopcheck.rules.backward_under_no_grad import BackwardUnderNoGrad
from loopcheck.rules.clip_after_step import ClipAfterStep
from loopcheck.rules.clip_before_backward import ClipBeforeBackward
from loopcheck.rules.clip_per_microbatch import ClipPerMicrobatch
from loopcheck.rules.clip_without_unscale import ClipWithoutUnscale
from loopcheck.rules.eval_without_no_grad import EvalWithoutNoGrad
from loopcheck.rules.loss_kept_with_graph import LossKeptWithGraph
from loopcheck.rules.missing_backward import MissingBackward
from loopcheck.rules.missing_scaler_update import MissingScalerUpdate
from loopcheck.rules.missing_step import MissingStep
from loopcheck.rules.missing_zero_grad import MissingZeroGrad
from loopcheck.rules.parse_error import ParseError
from loopcheck.rules.partial_accumulation_dropped import PartialAccumulationDropped
from loopcheck.rules.scheduler_before_optimizer import SchedulerBeforeOptimizer
from loopcheck.rules.scheduler_per_microbatch import SchedulerPerMicrobatch
from loopcheck.rules.step_before_backward import StepBeforeBackward
from loopcheck.rules.step_bypasses_scaler import StepBypassesScaler
from loopcheck.rules.train_mode_not_restored import TrainModeNotRestored
from loopcheck.rules.unscale_per_microbatch import UnscalePerMicrobatch
from loopcheck.rules.unscaled_accumulated_loss import UnscaledAccumulatedLoss
from loopcheck.rules.zero_grad_after_backward import ZeroGradAfterBackward
from loopcheck.rules.zero_grad_in_accumulation import ZeroGradInAccumulation

ALL_RULES: tuple[type[Rule], ...] = (
    MissingZeroGrad,
    ZeroGradAfterBackward,
    StepBeforeBackward,
    MissingBackward,
    MissingStep,
    ClipAfterStep,
    ClipBeforeBackward,
    ZeroGradInAccumulation,
    UnscaledAccumulatedLoss,
    SchedulerPerMicrobatch,
    ClipPerMicrobatch,
    AccumulationOffByOne,
    PartialAccumulationDropped,
    ClipWithoutUnscale,
    StepBypassesScaler,
    MissingScalerUpdate,
    UnscalePerMicrobatch,
    SchedulerBeforeOptimizer,
    LossKeptWithGraph,
    EvalWithoutNoGrad,
    TrainModeNotRestored,
    BackwardUnderNoGrad,
    ParseError,
)

RULES_BY_CODE: dict[str, type[Rule]] = {rule.code: rule for rule in ALL_RULES}


def get_rule(code_or_name: str) -> type[Rule] | None:
    """The rule with this code (``LC102``) or name (``zero-grad-after-backward``)."""
    key = code_or_name.strip()
    if key.upper() in RULES_BY_CODE:
        return RULES_BY_CODE[key.upper()]
    return next((rule for rule in ALL_RULES if rule.name == key.lower()), None)


__all__ = ["ALL_RULES", "RULES_BY_CODE", "SECTIONS", "Finding", "Rule", "Span", "get_rule"]
