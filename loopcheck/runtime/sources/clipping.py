"""CLIP moves: gradient clipping, seen through the helpers ``clip_grad_norm_`` calls.

``clip_grad_norm_`` computes the norm with ``_get_total_norm`` and clips with
``_clip_grads_with_norm_``, both looked up in its module's globals: wrapping them there catches
every route to it, names imported before the watch began included. The norm clipping computed
is kept (LC605 and LC604 reuse it), never recomputed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.utils.clip_grad as clip_grad
from torch import Tensor

from loopcheck.protocol import Grads, Move
from loopcheck.runtime import checks
from loopcheck.runtime.core import Clip, Core, OptRecord
from loopcheck.runtime.sites import Site, Where, user_site
from loopcheck.runtime.sources import Wrap, arg


def _listed_parameters(args: tuple, kwargs: dict) -> tuple[tuple, dict, list[Tensor]]:
    """The ``parameters`` argument of a clipping function as a list (a generator can be read
    once only: the list is what the function then gets)."""
    params = arg(args, kwargs, 0, "parameters")
    params = [params] if isinstance(params, Tensor) else list(params)
    if args:
        return (params, *args[1:]), kwargs, params
    return args, {**kwargs, "parameters": params}, params


class _Seen(NamedTuple):
    reached: list[OptRecord]  # the optimizers whose gradients were clipped
    ids: frozenset[int]  # id() of the parameters clipped
    site: Site


class ClipEvents:
    """Turns clipping calls into CLIP moves and records the norm they computed."""

    def __init__(self, core: Core) -> None:
        self.core = core
        # the last clipping of parameters with no gradient in no optimizer (an EMA copy) and
        # the backward count then: LC605 if an optimizer then steps unclipped gradients
        self.stray: tuple[Clip, int] | None = None
        # the norm type of the last norm _get_total_norm computed, by the tensor it returned
        self._norm_type: tuple[int, float] = (0, 2.0)

    def install(self, wrap: Wrap) -> None:
        if hasattr(clip_grad, "_clip_grads_with_norm_"):
            wrap(clip_grad, "_get_total_norm", self._around_total_norm)
            wrap(clip_grad, "_clip_grads_with_norm_", self._around_clip_with_norm)
            wrap(torch.nn.utils, "clip_grads_with_norm_", self._around_clip_with_norm)
        else:  # torch < 2.6: no helper to wrap
            wrap(clip_grad, "clip_grad_norm_", self._around_clip_grad_norm)
            wrap(torch.nn.utils, "clip_grad_norm_", self._around_clip_grad_norm)
        wrap(clip_grad, "clip_grad_value_", self._around_clip_value)
        wrap(torch.nn.utils, "clip_grad_value_", self._around_clip_value)

    def _around_total_norm(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        # _get_total_norm(tensors, norm_type=2.0, ...): clip_grad_norm_ passes its norm_type on
        total = call(*args, **kwargs)
        self._norm_type = (id(total), float(arg(args, kwargs, 1, "norm_type", 2.0)))
        return total

    def _around_clip_with_norm(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        # _clip_grads_with_norm_(parameters, max_norm, total_norm, foreach=None)
        args, kwargs, params = _listed_parameters(args, kwargs)
        max_norm = float(arg(args, kwargs, 1, "max_norm"))
        total = arg(args, kwargs, 2, "total_norm")
        norm_id, norm_type = self._norm_type
        seen = self._before_clip(params)
        result = call(*args, **kwargs)
        if seen is not None:
            norm_type = norm_type if norm_id == id(total) else 2.0
            with self.core.guard:
                self._after_clip(seen, params, (max_norm, norm_type, total))
        return result

    def _around_clip_grad_norm(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        # clip_grad_norm_(parameters, max_norm, norm_type=2.0, ...) -> total_norm
        args, kwargs, params = _listed_parameters(args, kwargs)
        max_norm = float(arg(args, kwargs, 1, "max_norm"))
        norm_type = float(arg(args, kwargs, 2, "norm_type", 2.0))
        seen = self._before_clip(params)
        total = call(*args, **kwargs)
        if seen is not None:
            with self.core.guard:
                self._after_clip(seen, params, (max_norm, norm_type, total))
        return total

    def _around_clip_value(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        args, kwargs, params = _listed_parameters(args, kwargs)
        seen = self._before_clip(params)
        result = call(*args, **kwargs)
        if seen is not None:
            with self.core.guard:
                self._after_clip(seen, params, None)
        return result

    def _record_norm(self, o: OptRecord, clip: Clip) -> None:
        """The norm clipping returned goes to the report's chart (read without a sync)."""
        if not isinstance(clip.total, Tensor) or clip.total.numel() != 1:
            return
        norms, index, step, max_norm = self.core.norms, o.index, o.steps, clip.max_norm
        self.core.checks.later(clip.total, lambda value: norms.add(index, step, value, max_norm))

    def _before_clip(self, params: list[Tensor]) -> _Seen | None:
        """The optimizers whose gradients a clipping touches, the clipped parameters and the
        call's site (None: the watch has stopped)."""
        core = self.core
        if core.stopped:
            return None
        with core.guard:
            ids = frozenset(map(id, params))
            reached = [o for o in core.opts if not o.retired and not o.ids.isdisjoint(ids)]
            site = user_site()
            for o in reached:
                core.settle(o, site, at_backward=False)
                core.feed(o, Move.CLIP, site, label="clip")
            return _Seen(reached, ids, site)
        return None

    def _after_clip(
        self, seen: _Seen, params: list[Tensor], norm: tuple[float, float, Tensor] | None
    ) -> None:
        """Record a clipping; ``norm`` is (max_norm, norm_type, the norm it computed), or None
        for clipping by value."""
        core = self.core
        reached = seen.reached
        for o in reached:
            core.refresh_rep(o)  # clipping rewrites the gradients: not by hand
        if norm is None:
            return
        clip = Clip(norm[0], norm[1], seen.ids, norm[2])
        for o in reached:
            if o.state.grads in (Grads.FRESH, Grads.PILED):  # else LC106/LC107 say it all
                o.clip = clip
                o.clipped_last = True
                self._record_norm(o, clip)
        if not reached:
            if all(p.grad is None for p in params):
                self.stray = (clip, core.backward_count)
            return
        if not any(o.state.scaled for o in reached):  # a scaler skips non-finite steps itself
            where = Where(seen.site, reached[0].steps, reached[0].index)

            def found() -> None:
                core.emit("LC604", where, "the gradient norm that clipping computed is NaN/Inf")

            checks.finite(core, clip.total, found)
