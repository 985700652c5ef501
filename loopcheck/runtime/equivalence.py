"""LC206: does gradient accumulation give the full-batch update? ``assert_equivalent_updates``.

The user's own training code runs twice, from the same seed: once on a batch in one go, once on
the same batch as N micro-batches. At the first optimizer ``step()`` of each run, the gradients
it is about to apply are copied (one copy, at that step only) and the run ends there. The two
are compared parameter by parameter; on a mismatch the shape of the difference names the likely
cause: a uniform ratio of about N is an undivided loss, about 1/N a loss divided twice, a ratio
that differs between parameters a per-micro-batch normalisation (each micro-batch's loss
averaged over its own tokens instead of the whole batch's). This is the only check that sees
that last bug: every micro-batch's loss looks divided.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.optim.optimizer import register_optimizer_step_pre_hook

from loopcheck.errors import LoopcheckError
from loopcheck.runtime import patching
from loopcheck.runtime.findings import make_finding
from loopcheck.runtime.sites import user_site

# A ratio counts as "about N" within this relative distance.
_RATIO_TOLERANCE = 0.05
# Gradients are "a uniform multiple" of each other when what is left after scaling is below
# this fraction of their norm.
_UNIFORM = 1e-3


class _FirstStep(BaseException):
    """Ends a run at its first optimizer step, once the gradients are copied."""


@dataclass
class _Run:
    """What one run left at its first optimizer step."""

    optimizer: str
    names: list[str]
    grads: list[Tensor | None]  # copies, on the CPU, in float64
    start: list[tuple[tuple[int, ...], float, float]]  # (shape, sum, sum of squares)
    backwards: int
    site: tuple[str, int]


def _fingerprint(param: Tensor) -> tuple[tuple[int, ...], float, float]:
    """Enough of a parameter's values to tell two starting points apart, without a copy."""
    values = param.double()
    return tuple(param.shape), float(values.sum()), float(values.square().sum())


def _name_params(params: list[Tensor], modules: list[weakref.ref]) -> list[str]:
    """Each parameter's name in the outermost module that ran a forward and holds it."""
    names: dict[int, str] = {}
    for ref in modules:
        module = ref()
        if module is None:
            continue
        for name, param in module.named_parameters():
            if len(name) > len(names.get(id(param), "")):
                names[id(param)] = name
    return [names.get(id(p), f"param {i} {tuple(p.shape)}") for i, p in enumerate(params)]


def _run(fn: Callable[[], Any], seed: int, what: str) -> _Run:
    if not callable(fn):
        raise TypeError(f"assert_equivalent_updates: {what} must be a callable, got {fn!r}")
    torch.manual_seed(seed)
    seen: list[_Run] = []
    backwards = [0]
    modules: dict[int, weakref.ref] = {}

    def on_step(opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        params = [p for group in opt.param_groups for p in group["params"]]
        names = [n for group in opt.param_groups for n in group.get("param_names", ())]
        if len(names) != len(params):
            names = _name_params(params, list(modules.values()))
        grads = [None if p.grad is None else p.grad.detach().double().cpu() for p in params]
        start = [
            (
                tuple(p.shape),
                float(p.detach().double().sum()),
                float(p.detach().double().square().sum()),
            )
            for p in params
        ]
        site = user_site()
        seen.append(
            _Run(type(opt).__name__, names, grads, start, backwards[0], (site.file, site.line))
        )
        raise _FirstStep

    def on_forward(module: torch.nn.Module, args: Any) -> None:
        if id(module) not in modules:
            modules[id(module)] = weakref.ref(module)

    def count(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        backwards[0] += 1
        return call(*args, **kwargs)

    with ExitStack() as stack:
        stack.enter_context(register_optimizer_step_pre_hook(on_step))
        stack.enter_context(register_module_forward_pre_hook(on_forward))
        stack.callback(patching.wrap(torch.autograd, "backward", count).remove)
        try:
            fn()
        except _FirstStep:
            pass
    if not seen:
        raise AssertionError(
            f"assert_equivalent_updates: {what} ran no optimizer step(): give it the code of at "
            "least one training step"
        )
    return seen[0]


def _norm(tensors: list[Tensor]) -> float:
    return math.sqrt(sum(float(t.square().sum()) for t in tensors))


def _cause(full: list[Tensor], acc: list[Tensor], micro: int) -> str:
    """The likely cause of the difference, from its shape."""
    dot = sum(float((a * f).sum()) for a, f in zip(acc, full, strict=True))
    full_norm = _norm(full)
    if full_norm == 0:
        return "the full-batch gradients are zero"
    scale = dot / full_norm**2
    residual = _norm([a - scale * f for a, f in zip(acc, full, strict=True)])
    uniform = residual <= _UNIFORM * max(_norm(acc), 1e-30)
    if not uniform:
        return (
            "the gradients differ by a factor that is not the same for every parameter: a "
            "per-micro-batch normalisation -- each micro-batch's loss averaged over its own "
            "tokens or samples instead of the whole batch's (micro-batches of uneven length "
            "then weigh their tokens unequally); sum the loss over tokens and divide by the "
            "whole batch's token count"
        )
    if micro > 1 and abs(scale / micro - 1) <= _RATIO_TOLERANCE:
        return (
            f"the accumulated gradients are {scale:.3g} times the full-batch ones, about the "
            f"number of micro-batches ({micro}): the loss was not divided by it (LC201); divide "
            f"each micro-batch's loss by {micro}"
        )
    if micro > 1 and abs(scale * micro - 1) <= _RATIO_TOLERANCE:
        return (
            f"the accumulated gradients are {scale:.3g} times the full-batch ones, about 1/"
            f"{micro}: the loss was divided twice (by hand and by a framework that divides by "
            "its own accumulation steps, or twice by hand)"
        )
    return (
        f"the accumulated gradients are {scale:.3g} times the full-batch ones (uniformly): the "
        "loss is normalised by another count than the full batch's"
    )


def assert_equivalent_updates(
    full: Callable[[], Any],
    accumulated: Callable[[], Any],
    *,
    rtol: float = 1e-4,
    atol: float = 1e-6,
    seed: int = 0,
) -> None:
    """Assert that N accumulated micro-batches give the update of the full batch (LC206).

    ``full`` and ``accumulated`` are zero-argument callables that run the user's own training
    code for at least one optimizer step: once on a batch in one go, once on the same batch as
    N micro-batches. Each is run after ``torch.manual_seed(seed)`` and stopped at its first
    ``step()``, whose gradients are compared parameter by parameter (``rtol``/``atol`` as in
    :func:`torch.allclose`). Both must start from the same parameters (build the model inside
    each callable, after the seed). On a mismatch, raises :class:`loopcheck.LoopcheckError`
    (an ``AssertionError``) naming LC206, the worst parameters and the likely cause.
    """
    one = _run(full, seed, "full")
    many = _run(accumulated, seed, "accumulated")
    if [s for s, _, _ in one.start] != [s for s, _, _ in many.start]:
        raise AssertionError(
            "assert_equivalent_updates: the two runs step different parameters "
            f"({one.optimizer} with {len(one.start)} tensors, {many.optimizer} with "
            f"{len(many.start)})"
        )
    for name, a, b in zip(one.names, one.start, many.start, strict=True):
        if a != b:  # the same seed and code give bit-identical parameters
            raise AssertionError(
                "assert_equivalent_updates: the two runs start from different parameters "
                f"({name} differs): build the model inside each callable, after the seed"
            )
    micro = max(1, round(many.backwards / max(one.backwards, 1)))
    mismatched: list[tuple[float, str]] = []
    full_grads: list[Tensor] = []
    acc_grads: list[Tensor] = []
    for name, f, a in zip(one.names, one.grads, many.grads, strict=True):
        if f is None and a is None:
            continue
        f = torch.zeros_like(a) if f is None else f
        a = torch.zeros_like(f) if a is None else a
        full_grads.append(f)
        acc_grads.append(a)
        if not torch.allclose(a, f, rtol=rtol, atol=atol):
            error = float((a - f).norm()) / max(float(f.norm()), atol)
            mismatched.append((error, name))
    if not mismatched:
        return
    mismatched.sort(reverse=True)
    worst = ", ".join(f"{name} (relative difference {error:.3g})" for error, name in mismatched[:3])
    more = f" and {len(mismatched) - 3} more" if len(mismatched) > 3 else ""
    detail = (
        f"{many.backwards} backward pass(es) before the first step, against {one.backwards} for "
        f"the full batch; {len(mismatched)} of {len(full_grads)} parameters differ: {worst}{more}"
        f"; likely cause: {_cause(full_grads, acc_grads, micro)}"
    )
    finding = make_finding("LC206", 0, detail, many.site[0], many.site[1])
    raise LoopcheckError(str(finding), finding)
