"""The checks only a run can make: stale gradients (LC601), orphan parameters (LC602), updates
not applied (LC603), non-finite numbers (LC604), clipping that missed (LC605), and whether a loss
was divided before backward (read for LC201, which the protocol judges).

Event sources call these at the moment the answer is there; values that live on the device are
read through :class:`~loopcheck.runtime.device.DeferredChecks`, never with a synchronisation per
step.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable

import torch
from torch import Tensor

from loopcheck.runtime.core import VERSION, Clip, Core, OptRecord, shown
from loopcheck.runtime.sites import Site, Where, user_site

# Relative tolerance when comparing a gradient norm with max_norm (clipping leaves it at
# max_norm * total / (total + 1e-6), and low-precision gradients round).
CLIP_TOLERANCE = 1e-2

# grad_fn names of a loss that was divided (or multiplied) before backward, of nodes that
# combine losses, and of loss reductions: a loss ending in one of the last is certainly not
# divided by a micro-batch count.
_DIVIDERS = frozenset({"DivBackward0", "DivBackward1", "MulBackward0", "MulBackward1"})
_COMBINERS = frozenset({"AddBackward0", "AddBackward1", "SubBackward0", "SubBackward1"})
_REDUCTIONS = (
    "Mean",
    "Sum",
    "NllLoss",
    "MseLoss",
    "L1Loss",
    "SmoothL1Loss",
    "HuberLoss",
    "BinaryCrossEntropy",
    "KlDiv",
    "SoftMarginLoss",
    "MultiMarginLoss",
    "MultilabelMarginLoss",
)


def _factor_is_one(node: object) -> bool:
    """Is this division or multiplication by exactly 1 (``accelerator.backward`` dividing by
    its own accumulation steps, 1 when the user accumulates by hand)? Only a number kept on the
    CPU is read: a divisor on the device could cost a synchronisation, and is taken as a real
    division."""
    try:
        other = node._saved_other  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError):
        return False
    if not isinstance(other, Tensor) or other.device.type != "cpu" or other.numel() != 1:
        return False
    return bool(other == 1)


def divided(loss: Tensor, scaled: bool) -> bool | None:
    """Was the loss divided (or scaled by a factor) before backward? None: cannot tell."""
    node = loss.grad_fn
    if node is not None and scaled:
        node = node.next_functions[0][0]  # below the GradScaler's multiplication
    frontier = [node]
    seen_reduction = False
    for _ in range(4):
        below = []
        for node in frontier:
            if node is None:
                continue
            name = type(node).__name__
            if name in _DIVIDERS:
                if not _factor_is_one(node):
                    return True
                below.append(node.next_functions[0][0])  # divided by 1: look at what was
            elif name in _COMBINERS:
                below.extend(n for n, _ in node.next_functions)
            elif name.startswith(_REDUCTIONS):
                seen_reduction = True
            else:
                return None
        if not below:
            break
        frontier = below
    return False if seen_reduction else None


def stale(o: OptRecord, grads: list[Tensor | None]) -> list[Tensor]:
    """LC601: the parameters whose gradient is the very tensor the previous step applied,
    unchanged (same object, same version), with no backward since."""
    found: list[Tensor] = []
    for param, position, grad, record in zip(o.params, o.positions, grads, o.applied, strict=True):
        if grad is None or record is None or position in o.fresh:
            continue
        if record[0]() is grad and grad._version == record[1]:
            found.append(param)
    return found


def applied(core: Core, o: OptRecord, grads: list[Tensor | None]) -> None:
    """LC603: a parameter with a gradient whose version counter the step did not move."""
    after = list(map(VERSION, o.params))
    if not any(map(operator.eq, after, o.before)):
        return  # every parameter moved
    unmoved = [
        p
        for p, grad, now, then in zip(o.params, grads, after, o.before, strict=True)
        if grad is not None and now == then
    ]
    moved = any(map(operator.ne, after, o.before))
    # A custom optimizer writing through `p.data` moves no version counter at all: judge
    # only optimizers whose updates are visible (torch's own, or another parameter moved).
    if not unmoved or not (moved or o.builtin):
        return
    device = unmoved[0].grad.device
    nonzero = torch.stack([p.grad.ne(0).any().to(device) for p in unmoved])
    where = Where(user_site(), o.steps, o.index)

    def found() -> None:
        flags = nonzero.tolist()
        names = [core.name(p) for p, flag in zip(unmoved, flags, strict=True) if flag]
        core.emit("LC603", where, shown(names))

    core.checks.check(nonzero.any(), found)


def finite(core: Core, value: Tensor, found: Callable[[], None]) -> None:
    """LC604's test: call ``found`` if the one-element tensor ``value`` is NaN or Inf."""
    if value.device.type == "cpu":  # reading it costs no synchronisation
        if not math.isfinite(value.item()):
            found()
    else:
        core.checks.check(~torch.isfinite(value.detach()).reshape(()), found)


def finite_loss(core: Core, loss: Tensor, site: Site) -> None:
    """LC604: the loss given to backward is NaN or Inf."""
    where = Where(site, core.step_index(), None)

    def found() -> None:
        core.emit("LC604", where, "the loss given to backward() is NaN or Inf")

    finite(core, loss, found)


def orphans(core: Core) -> None:
    """LC602: parameters a backward reached that still belong to no watched optimizer when one
    steps (by then every optimizer that steps has been adopted), reported once each."""
    by_site: dict[Site, list[int]] = {}
    for i, site in sorted(core.orphan_candidates.items()):
        if not core.owners[i] and i not in core.orphans_reported:
            by_site.setdefault(site, []).append(i)
    core.orphan_candidates.clear()
    for site, positions in by_site.items():
        core.orphans_reported.update(positions)
        names = [core.name(core.params[i]) for i in positions]
        core.emit("LC602", Where(site, core.step_index(), None), shown(names))


def _norm(grads: list[Tensor], norm_type: float) -> Tensor:
    device = grads[0].device
    norms = [torch.linalg.vector_norm(g.detach(), norm_type).to(device) for g in grads]
    return torch.linalg.vector_norm(torch.stack(norms), norm_type)


def _combine(a: Tensor, b: Tensor, norm_type: float) -> Tensor:
    b = b.to(a.device)
    if math.isinf(norm_type):
        return torch.maximum(a, b)
    return (a**norm_type + b**norm_type) ** (1.0 / norm_type)


def clip_effective(core: Core, o: OptRecord, where: Where, stray: tuple[Clip, int] | None) -> None:
    """LC605: after clipping, is the gradient norm the step reads still above max_norm?
    ``stray`` is the last clipping of parameters with no gradient in no optimizer (an EMA
    copy) and the backward count then. The norm is computed only when clipping may have
    missed: a clip of all the optimizer's parameters after the last backward costs nothing."""
    clip = o.clip
    if clip is None:
        if stray is None or stray[1] < o.last_backward:
            return
        clip = stray[0]
        grads = [p.grad for p in o.params if p.grad is not None]
        norm = _norm(grads, clip.norm_type)
        detail = (
            "clipping was given parameters that have no gradient and belong to no "
            "watched optimizer, such as a copy of the model"
        )
    elif o.clipped_last:
        if o.ids <= clip.ids:
            return  # everything the optimizer holds was clipped after the last backward
        missed = [p for p in o.params if p.grad is not None and id(p) not in clip.ids]
        if not missed:
            return
        clipped = torch.clamp(clip.total, max=clip.max_norm)
        missed_norm = _norm([p.grad for p in missed], clip.norm_type)
        norm = _combine(clipped, missed_norm, clip.norm_type)
        names = shown([core.name(p) for p in missed])
        detail = f"clipping missed parameters of the optimizer: {names}"
    else:
        grads = [p.grad for p in o.params if p.grad is not None]
        norm = _norm(grads, clip.norm_type)
        detail = "a backward() after clipping added unclipped gradients"
    limit = clip.max_norm * (1 + CLIP_TOLERANCE)

    def found() -> None:
        value = float(norm)
        core.emit("LC605", where, f"{detail}; norm {value:.4g} > max_norm {clip.max_norm:g}")

    core.checks.check(norm > limit, found)
