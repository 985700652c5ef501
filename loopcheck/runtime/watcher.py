"""The runtime watch: hooks on a real optimizer and model, turned into protocol events and checks.

Hooks record, checks decide. Every hook turns what it saw into an :class:`~loopcheck.protocol.Event`
for the optimizers it concerns and hands it to :func:`loopcheck.protocol.advance`, which owns the
order rules (LC101-LC108, LC201, LC301-LC304, LC401). The watch adds what only a run can see:
stale gradients (LC601), orphan parameters (LC602), updates not applied (LC603), non-finite
numbers (LC604) and clipping that missed (LC605), plus LC104/LC105 for an optimizer that never
gets gradients or never steps.

Where events come from:

* step pre/post hooks (global, so that an optimizer that steps through another one -- SAM's base
  optimizer, a wrapper -- counts for the watched one); a ``step(closure)`` is judged when the
  closure has run;
* a post-accumulate-grad hook per parameter; the first one of a backward queues a callback that
  queues another, which runs after DDP's all-reduce has written the gradients: that is the
  backward's end, where the parameters it reached are known exactly;
* the model's forward pre-hook (iteration boundaries only);
* wrappers, for the duration of the watch, of the instance's ``zero_grad``, of
  ``torch.autograd.backward`` (the loss tensor: was it divided, was it scaled), of the helper
  that ``clip_grad_norm_`` calls (whatever name it was imported under) and ``clip_grad_value_``,
  and of ``scaler.scale/unscale_/step/update`` and ``scheduler.step``.

An optimizer's iteration begins at the first forward or zero_grad after its step.
"""

from __future__ import annotations

import gc
import itertools
import math
import operator
import os
import sys
import sysconfig
import warnings
import weakref
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.utils.clip_grad as _clip_grad
from torch import Tensor
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.optim.lr_scheduler import LRScheduler
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from loopcheck import protocol
from loopcheck.errors import LoopcheckError, LoopcheckWarning
from loopcheck.protocol import Event, Grads, Move
from loopcheck.runtime import patching
from loopcheck.runtime.device import DeferredChecks
from loopcheck.runtime.findings import Finding, make_finding
from loopcheck.runtime.trace import Trace, render_json, render_text

MODES = ("warn", "raise", "record")

# Frames inside these directories are not the user's code: a finding points past them...
_SKIP_DIRS = (os.path.dirname(torch.__file__) + os.sep, os.path.dirname(__file__) + os.sep)
# ... and past installed libraries (Accelerate, Lightning) when user code called them.
_INSTALLED = tuple({sysconfig.get_paths()[key] + os.sep for key in ("purelib", "platlib")})

# Relative tolerance when comparing a gradient norm with max_norm (clipping leaves it at
# max_norm * total / (total + 1e-6), and low-precision gradients round).
_CLIP_TOLERANCE = 1e-2

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


class _Site(NamedTuple):
    """The line of the user's code that made a move, and the lines of installed libraries it
    went through (an ``accelerator.backward`` called from two lines makes two sites). It is the
    ``where`` of the events given to the protocol."""

    file: str
    line: int
    via: tuple[tuple[str, int], ...] = ()


_NO_SITE = _Site("", 0)

_GRAD = operator.attrgetter("grad")
_VERSION = operator.attrgetter("_version")


def _user_site() -> _Site:
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_SKIP_DIRS):
        frame = frame.f_back
    if frame is None:
        return _NO_SITE
    first = frame
    via: list[tuple[str, int]] = []
    while frame.f_code.co_filename.startswith(_INSTALLED):
        via.append((frame.f_code.co_filename, frame.f_lineno))
        frame = frame.f_back
        if frame is None or len(via) > 16:  # installed code all the way: report its first line
            return _Site(first.f_code.co_filename, first.f_lineno)
    return _Site(frame.f_code.co_filename, frame.f_lineno, tuple(via))


class _Where(NamedTuple):
    """Where a finding belongs."""

    site: _Site
    step: int
    optimizer: int | None


@dataclass(frozen=True)
class _Clip:
    max_norm: float
    norm_type: float
    ids: frozenset[int]  # id() of the parameters clipped
    total: Tensor  # the norm clipping computed (and returned): never recomputed


class _Guard:
    """Around the watch's own work in a hook: an error of the watch's own stops the watch, not
    the training (``LOOPCHECK_STRICT=1``, as in loopcheck's tests, lets it through)."""

    def __init__(self, watch: Watch) -> None:
        self.watch = watch

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> bool:
        if not isinstance(exc, Exception) or isinstance(exc, (LoopcheckError, Warning)):
            return False  # no error, ours to raise, or not an error at all (KeyboardInterrupt)
        if self.watch._strict:
            return False
        self.watch._stop(exc)
        return True


class _OptWatch:
    """What the watch keeps about one optimizer."""

    def __init__(self, index: int, opt: torch.optim.Optimizer) -> None:
        self.index = index
        self.opt = opt
        self.params: list[Tensor] = [p for g in opt.param_groups for p in g["params"]]
        self.ids = frozenset(map(id, self.params))
        # fused kernels update parameters without moving their version counters
        self.fused = any(g.get("fused") for g in opt.param_groups)
        self.builtin = type(opt).__module__.startswith("torch.optim.")
        self.state = protocol.UNKNOWN
        self.steps = 0  # step() calls seen (a GradScaler's skipped ones included)
        self.after_step = False  # stepped; the next forward or zero_grad begins an iteration
        self.stepping: object = None  # the optimizer whose step() is in flight
        self.closure = False  # that step has a closure: judge it when the closure has run
        self.via_scaler = False  # inside scaler.step(opt)
        self.scaler_found = False  # ... one found at this step (loopcheck run)
        self.step_ran = False  # a step hook ran inside the current scaler.step(opt)
        self.positions: list[int] = []  # of the parameters in the watch's list
        self.position_set: frozenset[int] = frozenset()
        self.fresh: set[int] = set()  # positions reached by a backward since the last step
        # each gradient as the last step left it: (weak reference, _version), or None
        self.applied: list[tuple[weakref.ref, int] | None] = [None] * len(self.params)
        self.before: list[int] = []  # parameter versions when the step began
        self.backwards = 0  # backward passes that reached this optimizer during the watch
        self.last_backward = 0  # the watch's backward count at the last one of them
        self.empty_steps = 0  # steps with no gradient at all (LC104)
        self.sites: set[_Site] = set()  # backward call sites since the last clear or step
        self.clip: _Clip | None = None  # the last norm clipping since the last clear or step
        self.clipped_last = False  # no backward since that clipping
        # after the last backward (or clipping): (position, id(grad), grad._version,
        # p._version) of one parameter, to notice gradients rewritten and parameters moved by
        # hand
        self.rep: tuple[int, int, int, int] | None = None
        self.held: list[_Where] = []  # LC108 before the first step (see _feed)
        self.site_steps: dict[_Site, int] = {}  # the step of the latest event at each site
        self.had_grads = False  # gradients were there when last seen: a clear can be noticed

    def __repr__(self) -> str:
        return f"<optimizer {self.index}: {type(self.opt).__name__}>"


def _as_list(value: Any, kind: type, what: str) -> list:
    if value is None:
        return []
    try:
        items = [value] if isinstance(value, kind) else list(value)
    except TypeError:
        items = [value]
    for item in items:
        if not isinstance(item, kind):
            raise TypeError(f"loopcheck.watch: {what} must be {kind.__name__}, got {item!r}")
    return items


def _several(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _tensors(value: Any) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _shown(names: list[str], limit: int = 5) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _other_line(cause: object, site: _Site) -> bool:
    return isinstance(cause, _Site) and cause != site


def _caller_norm_type() -> float:
    """The norm_type of the clip_grad_norm_ call in flight: the helper it calls is not told."""
    frame = sys._getframe(2)
    for _ in range(6):
        if frame is None:
            break
        if frame.f_code.co_name == "clip_grad_norm_":
            return float(frame.f_locals.get("norm_type", 2.0))
        frame = frame.f_back
    return 2.0


def _listed_parameters(args: tuple, kwargs: dict) -> tuple[tuple, dict, list[Tensor]]:
    """The ``parameters`` argument of a clipping function as a list (a generator can be read
    once only: the list is what the function then gets)."""
    params = _arg(args, kwargs, 0, "parameters")
    params = [params] if isinstance(params, Tensor) else list(params)
    if args:
        return (params, *args[1:]), kwargs, params
    return args, {**kwargs, "parameters": params}, params


def _divided(loss: Tensor, scaled: bool) -> bool | None:
    """Was the loss divided (or scaled by a factor) before backward? None: cannot tell."""
    node = loss.grad_fn
    if node is not None and scaled:
        node = node.next_functions[0][0]  # below the GradScaler's multiplication
    frontier = [node]
    seen_reduction = False
    for _ in range(3):
        below = []
        for node in frontier:
            if node is None:
                continue
            name = type(node).__name__
            if name in _DIVIDERS:
                return True
            if name in _COMBINERS:
                below.extend(n for n, _ in node.next_functions)
            elif name.startswith(_REDUCTIONS):
                seen_reduction = True
            else:
                return None
        if not below:
            break
        frontier = below
    return False if seen_reduction else None


def _norm(grads: list[Tensor], norm_type: float) -> Tensor:
    device = grads[0].device
    norms = [torch.linalg.vector_norm(g.detach(), norm_type).to(device) for g in grads]
    return torch.linalg.vector_norm(torch.stack(norms), norm_type)


def _combine(a: Tensor, b: Tensor, norm_type: float) -> Tensor:
    b = b.to(a.device)
    if math.isinf(norm_type):
        return torch.maximum(a, b)
    return (a**norm_type + b**norm_type) ** (1.0 / norm_type)


class Watch:
    """Watches optimizers (and models) while the ``with`` block runs; see :func:`watch`."""

    def __init__(
        self,
        optimizers: torch.optim.Optimizer | Iterable[torch.optim.Optimizer] | None,
        models: torch.nn.Module | Iterable[torch.nn.Module] | None = None,
        *,
        mode: str = "warn",
        scalers: Any = None,
        schedulers: Any = None,
        discover: bool = False,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"loopcheck.watch: mode must be one of {MODES}, got {mode!r}")
        opts = _as_list(optimizers, torch.optim.Optimizer, "opt")
        if not opts and not discover:
            raise ValueError("loopcheck.watch: give at least one optimizer")
        self.mode = mode
        self.findings: list[Finding] = []
        self._counts: list[int] = []
        self._finding_index: dict[tuple[str, _Site, int | None], int] = {}
        self._discover = discover
        self._models: list[torch.nn.Module] = _as_list(models, torch.nn.Module, "model")
        self._scalers: list[Any] = _several(scalers)
        self._schedulers: list[Any] = _several(schedulers)
        self._opts: list[_OptWatch] = []
        self._by_opt: dict[int, _OptWatch | None] = {}
        self._seen: list[object] = []  # optimizers looked up, kept alive so their ids stay theirs
        self._params: list[Tensor] = []
        self._index: dict[int, int] = {}  # id(param) -> position in _params
        self._owners: list[tuple[_OptWatch, ...]] = []  # the optimizers holding each one
        self._names: list[str] = []
        self._hits: list[int] = []  # parameters reached by the backward in flight
        self._open = False  # a callback waits for the end of the backward in flight
        self._depth = 0  # torch.autograd.backward calls in flight (reentrant checkpointing)
        self._backward_ctx: tuple[_Site, bool, bool | None] | None = None
        self._backward_count = 0
        self._orphans: set[int] = set()
        self._stray_clip: tuple[_Clip, int] | None = None
        self._transitions: dict[tuple, tuple[protocol.OptState, tuple]] = {}
        self._scaled: dict[int, weakref.ref] = {}
        self._checks = DeferredChecks(read_now=mode == "raise")
        self._trace = Trace()
        self._stack: ExitStack | None = None
        self._done = False
        self._strict = os.environ.get("LOOPCHECK_STRICT", "") not in ("", "0")
        self._guard = _Guard(self)
        self.stopped: str | None = None  # why the watch stopped checking, if it did
        for opt in opts:
            self._add_optimizer(opt)
        for number, model in enumerate(self._models):
            prefix = f"model[{number}]." if len(self._models) > 1 else ""
            for name, param in model.named_parameters():
                self._add_param(param, prefix + name)

    # ----------------------------------------------------------------- public interface

    def __enter__(self) -> Watch:
        if self._stack is not None or self._done:
            raise RuntimeError("a loopcheck watch can be entered once; make a new one")
        stack = ExitStack()
        self._stack = stack
        try:
            self._install(stack)
        except BaseException:
            self._stack = None
            stack.close()
            raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        stack, self._stack = self._stack, None
        self._done = True
        try:
            if stack is not None:
                stack.close()
        finally:
            self._finish(failed=exc_type is not None)

    def report(self, format: str = "text") -> str:
        """The per-step trace of events and the findings, as ``"text"`` or ``"json"``."""
        self._checks.flush()
        summary = {
            "optimizers": [type(o.opt).__name__ for o in self._opts],
            "steps": [o.steps for o in self._opts],
            "mode": self.mode,
            "stopped": self.stopped,
        }
        if format == "json":
            return render_json(self._trace, self.findings, self._counts, summary)
        if format != "text":
            raise ValueError(f"report format must be 'text' or 'json', got {format!r}")
        names = ", ".join(f"{i}: {n}" for i, n in enumerate(summary["optimizers"])) or "none"
        steps = ", ".join(map(str, summary["steps"])) or "0"
        header = (
            f"loopcheck watch: optimizers ({names}), steps ({steps}), "
            f"{len(self.findings)} finding(s)"
        )
        if self.stopped:
            header += f"\nstopped checking after an internal error: {self.stopped}"
        return render_text(self._trace, self.findings, self._counts, header, self._multi)

    @property
    def counts(self) -> dict[tuple[str, str, int | None], int]:
        """How many times each finding occurred, by (code, where, optimizer)."""
        return {
            (f.code, f.where, f.optimizer): n
            for f, n in zip(self.findings, self._counts, strict=True)
        }

    def _stop(self, exc: Exception) -> None:
        self.stopped = f"{type(exc).__name__}: {exc}"
        warnings.warn(
            f"loopcheck: the watch stopped checking after an internal error ({self.stopped}); "
            "training goes on unwatched. Please report it.",
            LoopcheckWarning,
            stacklevel=3,
        )

    # ----------------------------------------------------------------- bookkeeping

    @property
    def _multi(self) -> bool:
        return len(self._opts) > 1

    def _add_param(self, param: Tensor, name: str) -> int:
        i = self._index.get(id(param))
        if i is None:
            i = self._index[id(param)] = len(self._params)
            self._params.append(param)
            self._owners.append(())
            self._names.append(name)
        elif name and not self._names[i]:
            self._names[i] = name
        return i

    def _add_optimizer(self, opt: torch.optim.Optimizer) -> _OptWatch:
        o = _OptWatch(len(self._opts), opt)
        self._opts.append(o)
        self._by_opt[id(opt)] = o
        self._seen.append(opt)
        for param in o.params:
            i = self._add_param(param, "")
            if o not in self._owners[i]:
                self._owners[i] += (o,)
            o.positions.append(i)
        o.position_set = frozenset(o.positions)
        return o

    def _name(self, param: Tensor) -> str:
        i = self._index.get(id(param))
        if i is not None and self._names[i]:
            return self._names[i]
        for o in self._opts:
            for g, group in enumerate(o.opt.param_groups):
                for j, p in enumerate(group["params"]):
                    if p is param:
                        prefix = f"optimizer[{o.index}]." if self._multi else ""
                        return f"{prefix}param_groups[{g}]['params'][{j}]"
        return f"<parameter {tuple(param.shape)}>"

    def _step_index(self) -> int:
        return self._opts[0].steps if self._opts else 0

    def _label(self, label: str, o: _OptWatch) -> str:
        return f"{label}[{o.index}]" if self._multi else label

    # ----------------------------------------------------------------- installing

    def _install(self, stack: ExitStack) -> None:
        stack.enter_context(register_optimizer_step_pre_hook(self._on_step_pre))
        stack.enter_context(register_optimizer_step_post_hook(self._on_step_post))
        for o in self._opts:
            self._install_optimizer(o)
        for i in range(len(self._params)):
            self._hook_param(i)
        for model in self._models:
            stack.enter_context(model.register_forward_pre_hook(self._on_forward))
            self._wrap(model, "zero_grad", self._model_zero_around(model))
        if self._discover and not self._models:
            # ``loopcheck run`` knows no model: any module's forward after a step begins the
            # next iteration (a public global hook, removed on exit like the others)
            stack.enter_context(register_module_forward_pre_hook(self._on_any_forward))
        self._wrap(torch.autograd, "backward", self._around_backward)
        if hasattr(_clip_grad, "_clip_grads_with_norm_"):
            # clip_grad_norm_ calls these through its module's globals: wrapping them there
            # catches every route to it, names imported before the watch included
            self._wrap(_clip_grad, "_clip_grads_with_norm_", self._around_clip_with_norm)
            self._wrap(torch.nn.utils, "clip_grads_with_norm_", self._around_clip_with_norm)
        else:  # torch < 2.6: no helper to wrap
            self._wrap(_clip_grad, "clip_grad_norm_", self._around_clip_grad_norm)
            self._wrap(torch.nn.utils, "clip_grad_norm_", self._around_clip_grad_norm)
        self._wrap(_clip_grad, "clip_grad_value_", self._around_clip_value)
        self._wrap(torch.nn.utils, "clip_grad_value_", self._around_clip_value)
        for scaler in self._scalers:
            self._install_scaler(scaler)
        for scheduler in self._schedulers:
            self._wrap(scheduler, "step", self._scheduler_around(scheduler))

    def _wrap(self, owner: object, attr: str, around: Callable[..., Any]) -> None:
        assert self._stack is not None
        self._stack.callback(patching.wrap(owner, attr, around).remove)

    def _install_optimizer(self, o: _OptWatch) -> None:
        self._wrap(o.opt, "zero_grad", self._opt_zero_around(o))

    def _install_scaler(self, scaler: Any) -> None:
        self._wrap(scaler, "scale", self._around_scale)
        self._wrap(scaler, "unscale_", self._around_unscale)
        self._wrap(scaler, "step", self._around_scaler_step)
        self._wrap(scaler, "update", self._around_scaler_update)

    def _hook_param(self, i: int) -> None:
        param = self._params[i]
        if not param.requires_grad:
            return  # frozen: never gets a gradient, never an orphan
        hits = self._hits
        open_backward = self._open_backward

        def hook(_param: Tensor) -> None:
            if not self._open:
                open_backward()
            hits.append(i)

        assert self._stack is not None
        self._stack.callback(param.register_post_accumulate_grad_hook(hook).remove)

    def _watch_for(self, opt: object) -> _OptWatch | None:
        """The watched optimizer an optimizer's step counts for (adopting it when discovering)."""
        o = self._by_opt.get(id(opt), False)
        if o is not False:
            return o
        self._seen.append(opt)
        ids = {id(p) for g in getattr(opt, "param_groups", ()) for p in g["params"]}
        # an optimizer stepping the parameters of a watched one: SAM's base optimizer
        o = next((w for w in self._opts if ids and ids <= w.ids), None)
        if o is None and self._discover and isinstance(opt, torch.optim.Optimizer):
            o = self._adopt(opt)
        self._by_opt[id(opt)] = o
        return o

    def _adopt(self, opt: torch.optim.Optimizer) -> _OptWatch:
        """Start watching an optimizer seen for the first time at its step (``loopcheck run``)."""
        first = len(self._params)
        o = self._add_optimizer(opt)
        self._install_optimizer(o)
        for i in range(first, len(self._params)):
            self._hook_param(i)
        for ref in gc.get_referrers(opt):  # its LR schedulers, made before the first step
            if isinstance(ref, LRScheduler) and ref.optimizer is opt:
                self._wrap(ref, "step", self._scheduler_around(ref))
        return o

    def _discover_scaler(self) -> bool:
        """Is the step in flight made by a GradScaler we do not wrap yet? Then wrap it."""
        frame = sys._getframe(2)
        for _ in range(8):
            if frame is None:
                return False
            if frame.f_code.co_name in ("step", "_maybe_opt_step"):
                owner = frame.f_locals.get("self")
                if isinstance(owner, torch.amp.GradScaler):
                    if owner not in self._scalers:
                        self._scalers.append(owner)
                        self._install_scaler(owner)
                    return True
            frame = frame.f_back
        return False

    # ----------------------------------------------------------------- feeding the protocol

    def _feed(
        self,
        o: _OptWatch,
        move: Move,
        site: _Site,
        *,
        label: str | None = None,
        scaled: bool = False,
        divided: bool | None = None,
        via_scaler: bool = False,
        ignore: tuple[str, ...] = (),
    ) -> None:
        if o.after_step and move is Move.ZERO:
            self._new_iteration(o)
        o.state, violations = self._advance(o.state, move, site, scaled, divided, via_scaler)
        o.site_steps[site] = o.steps
        if label != "":
            self._trace.event(self._label(label or move.value, o))
        if move is Move.STEP:
            o.after_step = True
        for violation in violations:
            if violation.code in ignore:
                continue
            if violation.code == "LC108" and _other_line(violation.cause, site):
                # The lost backward came from another line than this one: not a micro-batch
                # cleared inside an accumulation loop, but, say, a GAN generator's backward
                # that reached the discriminator, whose gradients it was right to clear.
                continue
            blamed = violation.where
            where = _Where(blamed, o.site_steps.get(blamed, o.steps), o.index)
            if violation.code == "LC108" and o.steps == 0:
                # Before the first step, discarded gradients may mean no step at all: the
                # first step settles it as LC108, the end of the watch as LC105.
                o.held.append(where)
                continue
            self._emit(violation.code, where)

    def _advance(
        self,
        state: protocol.OptState,
        move: Move,
        site: _Site,
        scaled: bool = False,
        divided: bool | None = None,
        via_scaler: bool = False,
    ) -> tuple[protocol.OptState, tuple[protocol.Violation, ...]]:
        """protocol.advance, remembered: a training loop repeats the same few transitions."""
        key = (state, move, site, scaled, divided, via_scaler)
        known = self._transitions.get(key)
        if known is None:
            if len(self._transitions) >= 4096:
                self._transitions.clear()
            event = Event(move, site, scaled, divided, via_scaler)
            known = self._transitions[key] = protocol.advance(state, event)
        return known

    def _new_iteration(self, o: _OptWatch) -> None:
        o.after_step = False
        o.state, _ = self._advance(o.state, Move.ITERATION, _NO_SITE)

    def _emit(self, code: str, where: _Where, detail: str = "") -> None:
        finding = make_finding(
            code, where.step, detail, where.site.file, where.site.line, where.optimizer
        )
        self._trace.code(code)
        key = (code, where.site, where.optimizer)
        index = self._finding_index.get(key)
        if index is None:
            self._finding_index[key] = len(self.findings)
            self.findings.append(finding)
            self._counts.append(1)
        else:
            self._counts[index] += 1
        if self.mode == "raise":
            raise LoopcheckError(str(finding), finding)
        if self.mode == "warn" and index is None:
            if finding.file:
                warnings.warn_explicit(str(finding), LoopcheckWarning, finding.file, finding.line)
            else:
                warnings.warn(str(finding), LoopcheckWarning, stacklevel=2)

    # ----------------------------------------------------------------- gradients cleared or
    # rewritten by hand: no hook sees `p.grad = None`, so look when it matters

    def _settle(self, o: _OptWatch, site: _Site, at_backward: bool) -> None:
        grads = o.state.grads
        if not o.had_grads or grads is Grads.CLEAR or grads is Grads.UNKNOWN:
            return
        for param in o.params:
            if param.grad is not None:
                break
        else:
            self._on_zero(o, site, "zero(by hand)")
            return
        if at_backward and grads is Grads.STALE and self._edited_since_step(o):
            self._feed(o, Move.OPAQUE, site, label="grads-edited")

    def _edited_since_step(self, o: _OptWatch) -> bool:
        for grad, record in zip(map(_GRAD, o.params), o.applied, strict=True):
            if record is None:
                if grad is not None:
                    return True
            elif grad is None or record[0]() is not grad or grad._version != record[1]:
                return True
        return False

    def _on_zero(self, o: _OptWatch, site: _Site, label: str = "zero") -> None:
        if o.rep is not None and o.state.grads in (Grads.FRESH, Grads.PILED):
            i, _, _, version = o.rep
            if self._params[i]._version != version:
                # parameters moved since the backward without a step (SAM's first_step, a
                # manual update): the gradients were used
                self._feed(o, Move.GRAD_ACCESS, site, label="params-edited")
        self._feed(o, Move.ZERO, site, label=label)
        o.had_grads = False
        o.sites.clear()
        o.clip = None
        o.clipped_last = False
        o.rep = None

    def _refresh_rep(self, o: _OptWatch) -> None:
        if o.rep is None:
            return
        i, _, _, version = o.rep
        grad = self._params[i].grad
        o.rep = None if grad is None else (i, id(grad), grad._version, version)

    # ----------------------------------------------------------------- zero_grad

    def _opt_zero_around(self, o: _OptWatch) -> Callable[..., Any]:
        def around(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            result = call(*args, **kwargs)
            if not self.stopped:
                with self._guard:
                    self._on_zero(o, _user_site())
            return result

        return around

    def _model_zero_around(self, model: torch.nn.Module) -> Callable[..., Any]:
        model_ids = {id(p) for p in model.parameters()}

        def around(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            result = call(*args, **kwargs)
            if self.stopped:
                return result
            with self._guard:
                site = _user_site()
                for o in self._opts:
                    if o.ids <= model_ids:
                        self._on_zero(o, site, "model.zero")
                    elif not o.ids.isdisjoint(model_ids):
                        self._feed(o, Move.OPAQUE, site, label="model.zero(part)")
            return result

        return around

    # ----------------------------------------------------------------- forward

    def _on_forward(self, module: torch.nn.Module, args: Any) -> None:
        if torch.compiler.is_compiling() or self.stopped:
            return  # traced into a compiled graph: not seen (docs/runtime.md)
        with self._guard:
            for o in self._opts:
                if o.after_step:
                    self._new_iteration(o)
            self._trace.event("forward")

    def _on_any_forward(self, module: torch.nn.Module, args: Any) -> None:
        # called for every submodule: cheap unless an optimizer has just stepped
        if any(o.after_step for o in self._opts):
            self._on_forward(module, args)

    # ----------------------------------------------------------------- backward

    def _around_backward(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self._depth += 1
        if self._depth > 1:
            # a backward inside a backward (reentrant checkpointing): part of the outer one
            try:
                return call(*args, **kwargs)
            finally:
                self._depth -= 1
                if self._hits and not self._open:
                    self._open_backward()  # the outer backward's end is the end
        tensors = _arg(args, kwargs, 0, "tensors")
        loss = tensors if isinstance(tensors, Tensor) else None
        if isinstance(tensors, (list, tuple)) and len(tensors) == 1:
            loss = tensors[0] if isinstance(tensors[0], Tensor) else None
        try:
            if not self.stopped:
                with self._guard:
                    self._before_backward(loss)
            return call(*args, **kwargs)
        finally:
            self._depth -= 1
            self._backward_ctx = None
            self._open = False
            self._hits.clear()  # only left over when the backward failed midway

    def _before_backward(self, loss: Tensor | None) -> None:
        site = _user_site()
        for o in self._opts:
            self._settle(o, site, at_backward=True)
        scaled = False
        divided: bool | None = None
        if loss is not None:
            ref = self._scaled.get(id(loss))
            scaled = ref is not None and ref() is loss
            divided = _divided(loss, scaled)
            if not scaled and loss.numel() == 1 and loss.is_floating_point():
                self._check_loss(loss, site)
        self._backward_ctx = (site, scaled, divided)

    def _check_loss(self, loss: Tensor, site: _Site) -> None:
        where = _Where(site, self._step_index(), None)

        def found() -> None:
            self._emit("LC604", where, "the loss given to backward() is NaN or Inf")

        self._check_finite(loss, found)

    def _check_finite(self, value: Tensor, found: Callable[[], None]) -> None:
        """Call ``found`` if the one-element tensor ``value`` is NaN or Inf."""
        if value.device.type == "cpu":  # reading it costs no synchronisation
            if not math.isfinite(value.item()):
                found()
        else:
            self._checks.check(~torch.isfinite(value.detach()).reshape(()), found)

    def _open_backward(self) -> None:
        self._open = True
        torch.autograd.Variable._execution_engine.queue_callback(self._end_backward_soon)

    def _end_backward_soon(self) -> None:
        # queued behind the callbacks queued so far: DDP's, which writes the reduced gradients
        torch.autograd.Variable._execution_engine.queue_callback(self._end_backward)

    def _end_backward(self) -> None:
        self._open = False
        if self._depth > 1:
            return  # an inner backward ended: its gradients belong to the outer one
        if self.stopped:
            self._hits.clear()
            return
        with self._guard:
            self._backward_ended()

    def _backward_ended(self) -> None:
        hits = self._hits[:]
        self._hits.clear()
        site, scaled, divided = self._backward_ctx or (_NO_SITE, False, None)
        self._backward_ctx = None
        self._backward_count += 1
        owners = self._owners
        keys = set(map(owners.__getitem__, hits))
        reached = sorted({o for key in keys for o in key}, key=operator.attrgetter("index"))
        if reached:
            label = "backward"
            if self._multi:
                label += "[" + ",".join(str(o.index) for o in reached) + "]"
            self._trace.event(label)
        for o in reached:
            o.fresh.update(hits)
            first = next(i for i in hits if i in o.position_set)
            self._backward_for(o, first, site, scaled, divided)
        if () in keys:
            self._on_orphans([i for i in hits if not owners[i]], site)

    def _backward_for(
        self, o: _OptWatch, first: int, site: _Site, scaled: bool, divided: bool | None
    ) -> None:
        # A backward repeated from the same line before the step is gradient accumulation:
        # only then does an undivided loss matter (two losses from two lines -- a GAN's real
        # and fake -- are meant to add up).
        repeated = site is not _NO_SITE and site in o.sites
        o.sites.add(site)
        self._feed(
            o,
            Move.BACKWARD,
            site,
            label="",
            scaled=scaled,
            divided=divided if repeated else None,
        )
        o.backwards += 1
        o.had_grads = True
        o.last_backward = self._backward_count
        o.clipped_last = False
        param = self._params[first]
        grad = param.grad
        o.rep = None if grad is None else (first, id(grad), grad._version, param._version)

    def _on_orphans(self, orphans: list[int], site: _Site) -> None:
        new = [i for i in orphans if i not in self._orphans]
        if not new:
            return
        self._orphans.update(new)
        names = [self._name(self._params[i]) for i in new]
        self._emit("LC602", _Where(site, self._step_index(), None), _shown(names))

    # ----------------------------------------------------------------- clipping

    def _around_clip_with_norm(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        # _clip_grads_with_norm_(parameters, max_norm, total_norm, foreach=None)
        args, kwargs, params = _listed_parameters(args, kwargs)
        max_norm = float(_arg(args, kwargs, 1, "max_norm"))
        total = _arg(args, kwargs, 2, "total_norm")
        reached = self._before_clip(params)
        result = call(*args, **kwargs)
        if reached is not None:
            with self._guard:
                self._after_clip(reached, params, (max_norm, _caller_norm_type(), total))
        return result

    def _around_clip_grad_norm(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        # clip_grad_norm_(parameters, max_norm, norm_type=2.0, ...) -> total_norm
        args, kwargs, params = _listed_parameters(args, kwargs)
        max_norm = float(_arg(args, kwargs, 1, "max_norm"))
        norm_type = float(_arg(args, kwargs, 2, "norm_type", 2.0))
        reached = self._before_clip(params)
        total = call(*args, **kwargs)
        if reached is not None:
            with self._guard:
                self._after_clip(reached, params, (max_norm, norm_type, total))
        return total

    def _around_clip_value(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        args, kwargs, params = _listed_parameters(args, kwargs)
        reached = self._before_clip(params)
        result = call(*args, **kwargs)
        if reached is not None:
            with self._guard:
                self._after_clip(reached, params, None)
        return result

    def _before_clip(self, params: list[Tensor]) -> list[_OptWatch] | None:
        """The optimizers whose gradients a clipping touches (None: the watch has stopped)."""
        if self.stopped:
            return None
        with self._guard:
            ids = frozenset(map(id, params))
            reached = [o for o in self._opts if not o.ids.isdisjoint(ids)]
            site = _user_site()
            for o in reached:
                self._settle(o, site, at_backward=False)
                self._feed(o, Move.CLIP, site, label="clip")
            return reached
        return None

    def _after_clip(
        self,
        reached: list[_OptWatch],
        params: list[Tensor],
        norm: tuple[float, float, Tensor] | None,
    ) -> None:
        """Record a clipping; ``norm`` is (max_norm, norm_type, the norm it computed), or None
        for clipping by value."""
        for o in reached:
            self._refresh_rep(o)  # clipping rewrites the gradients: not by hand
        if norm is None:
            return
        clip = _Clip(norm[0], norm[1], frozenset(map(id, params)), norm[2])
        for o in reached:
            if o.state.grads in (Grads.FRESH, Grads.PILED):  # else LC106/LC107 say it all
                o.clip = clip
                o.clipped_last = True
        if not reached:
            if all(p.grad is None for p in params):
                self._stray_clip = (clip, self._backward_count)
            return
        if not any(o.state.scaled for o in reached):  # a scaler skips non-finite steps itself
            where = _Where(_user_site(), reached[0].steps, reached[0].index)

            def found() -> None:
                self._emit("LC604", where, "the gradient norm that clipping computed is NaN/Inf")

            self._check_finite(clip.total, found)

    def _check_clip(self, o: _OptWatch, where: _Where) -> None:
        """LC605: after clipping, is the gradient norm the step reads still above max_norm?"""
        clip = o.clip
        if clip is None:
            stray = self._stray_clip
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
            names = _shown([self._name(p) for p in missed])
            detail = f"clipping missed parameters of the optimizer: {names}"
        else:
            grads = [p.grad for p in o.params if p.grad is not None]
            norm = _norm(grads, clip.norm_type)
            detail = "a backward() after clipping added unclipped gradients"
        limit = clip.max_norm * (1 + _CLIP_TOLERANCE)

        def found() -> None:
            value = float(norm)
            self._emit("LC605", where, f"{detail}; norm {value:.4g} > max_norm {clip.max_norm:g}")

        self._checks.check(norm > limit, found)

    # ----------------------------------------------------------------- step

    def _on_step_pre(self, opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        if not self.stopped:
            with self._guard:
                self._step_began(opt, args, kwargs)

    def _on_step_post(self, opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        if not self.stopped:
            with self._guard:
                self._step_ended(opt)

    def _step_began(self, opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        o = self._watch_for(opt)
        if o is None:
            return
        if o.stepping is not None and o.stepping is not opt:
            return  # an inner optimizer stepping inside the watched one's step()
        self._checks.poll()
        if self._discover and o.steps == 0 and not o.via_scaler and self._discover_scaler():
            # this first step is inside a scaler.step() found just now, which is not wrapped
            o.via_scaler = o.scaler_found = True
        o.stepping = opt
        o.step_ran = False
        if not o.fused:
            o.before = list(map(_VERSION, o.params))
        closure = _arg(args, kwargs, 1, "closure")
        o.closure = closure is not None
        if not o.closure:
            self._judge_step(o)

    def _step_ended(self, opt: torch.optim.Optimizer) -> None:
        o = self._by_opt.get(id(opt))
        if o is None or o.stepping is not opt:
            return
        o.stepping = None
        if o.closure:
            o.closure = False
            self._judge_step(o)
        o.step_ran = True
        if o.scaler_found:
            o.via_scaler = o.scaler_found = False
        self._after_step(o, skipped=False)

    def _judge_step(self, o: _OptWatch) -> None:
        """The checks of a step, on the gradients it is about to read (or, with a closure, has
        just read)."""
        site = _user_site()
        where = _Where(site, o.steps, o.index)
        for held in o.held:
            self._emit("LC108", held)
        o.held.clear()
        self._settle(o, site, at_backward=False)
        rewritten = False
        if o.rep is not None:
            i, grad_id, grad_version, _ = o.rep
            grad = self._params[i].grad
            rewritten = grad is not None and (id(grad) != grad_id or grad._version != grad_version)
        if rewritten:
            self._feed(o, Move.GRAD_ACCESS, site, label="grads-edited")
        grads = list(map(_GRAD, o.params))
        has_grad = any(map(operator.is_not, grads, itertools.repeat(None)))
        stale: list[Tensor] = []
        if has_grad and not o.position_set <= o.fresh:
            for param, position, grad, record in zip(
                o.params, o.positions, grads, o.applied, strict=True
            ):
                if grad is None or record is None or position in o.fresh:
                    continue
                if record[0]() is grad and grad._version == record[1]:
                    stale.append(param)
        if has_grad:
            self._check_clip(o, where)
        elif o.backwards == 0:
            o.empty_steps += 1
        # gradients rescaled by hand after the last backward normalise an accumulated loss
        self._feed(
            o,
            Move.STEP,
            site,
            label="step" if not o.via_scaler else "scaler.step",
            via_scaler=o.via_scaler,
            ignore=("LC201",) if rewritten else (),
        )
        if stale:
            names = [self._name(p) for p in stale]
            self._emit("LC601", where, f"{len(stale)} parameter(s): {_shown(names)}")
        if o.empty_steps == 2 and not has_grad:
            self._emit("LC104", where, f"{o.empty_steps} steps without a single gradient")

    def _after_step(self, o: _OptWatch, skipped: bool) -> None:
        grads = list(map(_GRAD, o.params))
        if not skipped and not o.fused:
            self._check_applied(o, grads)
        o.applied = [None if g is None else (weakref.ref(g), g._version) for g in grads]
        o.had_grads = any(o.applied)
        o.fresh = set()
        o.sites.clear()
        o.clip = None
        o.clipped_last = False
        o.rep = None
        self._trace.close(o.index, o.steps)
        o.steps += 1

    def _check_applied(self, o: _OptWatch, grads: list[Tensor | None]) -> None:
        """LC603: a parameter with a gradient whose version counter the step did not move."""
        after = list(map(_VERSION, o.params))
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
        where = _Where(_user_site(), o.steps, o.index)

        def found() -> None:
            flags = nonzero.tolist()
            names = [self._name(p) for p, flag in zip(unmoved, flags, strict=True) if flag]
            self._emit("LC603", where, _shown(names))

        self._checks.check(nonzero.any(), found)

    # ----------------------------------------------------------------- GradScaler, scheduler

    def _around_scale(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        result = call(*args, **kwargs)
        if self.stopped:
            return result
        with self._guard:
            scaled = self._scaled
            for tensor in _tensors(result):
                key = id(tensor)
                scaled[key] = weakref.ref(tensor, lambda _, key=key: scaled.pop(key, None))
        return result

    def _around_unscale(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        o = None
        if not self.stopped:
            with self._guard:
                o = self._watch_for(_arg(args, kwargs, 0, "optimizer"))
                if o is not None and not o.via_scaler:  # scaler.step's own is part of the step
                    site = _user_site()
                    self._settle(o, site, at_backward=False)
                    self._feed(o, Move.UNSCALE, site, label="unscale")
        result = call(*args, **kwargs)
        if o is not None and not self.stopped:
            with self._guard:
                self._refresh_rep(o)
        return result

    def _around_scaler_step(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        o = None if self.stopped else self._watch_for(_arg(args, kwargs, 0, "optimizer"))
        if o is None:
            return call(*args, **kwargs)
        o.via_scaler = True
        o.step_ran = False
        try:
            result = call(*args, **kwargs)
        finally:
            o.via_scaler = False
        if not o.step_ran and not self.stopped:  # inf/NaN gradients: the scaler skipped it
            with self._guard:
                site = _user_site()
                self._feed(o, Move.STEP, site, label="scaler.step(skipped)", via_scaler=True)
                self._after_step(o, skipped=True)
        return result

    def _around_scaler_update(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        result = call(*args, **kwargs)
        if self.stopped:
            return result
        with self._guard:
            site = _user_site()
            for o in self._opts:
                self._feed(o, Move.SCALER_UPDATE, site, label="")
            self._trace.event("scaler.update")
        return result

    def _scheduler_around(self, scheduler: Any) -> Callable[..., Any]:
        def around(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            if not self.stopped:
                with self._guard:
                    o = self._watch_for(getattr(scheduler, "optimizer", None))
                    if o is not None:
                        self._feed(o, Move.SCHED_STEP, _user_site(), label="sched")
            return call(*args, **kwargs)

        return around

    # ----------------------------------------------------------------- the end

    def _finish(self, failed: bool) -> None:
        mode = self.mode
        if failed and mode == "raise":
            self.mode = "record"  # never hide the error in flight behind one of ours
        try:
            if self.stopped:
                return
            with self._guard:
                self._checks.flush()
            if not failed and not self.stopped:
                for o in self._opts:
                    if o.steps == 0 and o.backwards >= 2:
                        where = _Where(_NO_SITE, 0, o.index)
                        self._emit("LC105", where, f"{o.backwards} backward passes, no step")
        finally:
            self.mode = mode
