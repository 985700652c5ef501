"""A watch's state and its two doors: moves into the protocol, findings out.

Every event source turns what its hook saw into a :class:`~loopcheck.protocol.Move` for the
optimizers it concerns and hands it to :meth:`Core.feed`, which asks
:func:`loopcheck.protocol.advance` (the order rules live there, remembered per transition) and
reports the violations; every check reports through :meth:`Core.emit` (warn, raise or record).
The core also keeps what no hook sees: gradients cleared or rewritten by hand, noticed when
they matter (:meth:`Core.settle`).
"""

from __future__ import annotations

import operator
import os
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from loopcheck import protocol
from loopcheck.errors import LoopcheckError, LoopcheckWarning
from loopcheck.protocol import Event, Grads, Move
from loopcheck.runtime.device import DeferredChecks
from loopcheck.runtime.findings import Finding, make_finding
from loopcheck.runtime.norms import Norms
from loopcheck.runtime.sites import NO_SITE, Site, Where
from loopcheck.runtime.trace import Trace

MODES = ("warn", "raise", "record")

GRAD = operator.attrgetter("grad")
VERSION = operator.attrgetter("_version")


@dataclass(frozen=True)
class Clip:
    """A norm clipping: its limit, the parameters it was given and the norm it computed."""

    max_norm: float
    norm_type: float
    ids: frozenset[int]  # id() of the parameters clipped
    total: Tensor  # the norm clipping computed (and returned): never recomputed


class OptRecord:
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
        self.step_ran = False  # a step hook ran inside the current scaler.step(opt)
        self.positions: list[int] = []  # of the parameters in the watch's list
        self.position_set: frozenset[int] = frozenset()
        self.fresh: set[int] = set()  # positions reached by a backward since the last step
        # each gradient as the last step left it: (weak reference, _version), or None
        self.applied: list[tuple[weakref.ref, int] | None] = [None] * len(self.params)
        self.before: list[int] = []  # parameter versions when the step began
        self.grads: list[Tensor | None] | None = None  # what the step in flight reads
        self.backwards = 0  # backward passes that reached this optimizer during the watch
        self.last_backward = 0  # the watch's backward count at the last one of them
        self.empty_steps = 0  # steps with no gradient at all (LC104)
        self.sites: set[Site] = set()  # backward call sites since the last clear or step
        self.clip: Clip | None = None  # the last norm clipping since the last clear or step
        self.clipped_last = False  # no backward since that clipping
        # after the last backward (or clipping): (position, id(grad), grad._version,
        # p._version) of one parameter, to notice gradients rewritten and parameters moved by
        # hand
        self.rep: tuple[int, int, int, int] | None = None
        # LC108 suspicions (where, the line of the backward whose gradients were cleared),
        # judged at the next step (see Core.feed)
        self.held: dict[tuple[Where, object], None] = {}
        self.site_steps: dict[Site, int] = {}  # the step of the latest event at each site
        self.had_grads = False  # gradients were there when last seen: a clear can be noticed
        self.zeroed = False  # its own zero_grad() was called during the watch
        self.cleared_at: Site | None = None  # the first `p.grad = None` since its gradients
        self.retired = False  # a newer optimizer took its parameters over (see Core.retire)
        # parameter versions when the watch began watching it: a step the watch could not see
        # (inside torch.compile'd code) still moves them
        self.start_versions = list(map(VERSION, self.params))

    def __repr__(self) -> str:
        return f"<optimizer {self.index}: {type(self.opt).__name__}>"

    def moved(self) -> bool:
        """Did any of its parameters change since the watch began watching it?"""
        return list(map(VERSION, self.params)) != self.start_versions


class StepLimitReached(BaseException):
    """Raised at the start of the iteration after the ``max_steps``-th optimizer step: ends the
    watched code early (``loopcheck run --max-steps``). A ``BaseException``, like
    ``KeyboardInterrupt``, so that the script's own ``except Exception`` lets it through; the
    watch that raised it swallows it on exit."""

    def __init__(self, core: Core) -> None:
        super().__init__(f"loopcheck: {core.max_steps} optimizer steps: stopping")
        self.core = core


class Guard:
    """Around the watch's own work in a hook: an error of the watch's own stops the watch, not
    the training (``LOOPCHECK_STRICT=1``, as in loopcheck's tests, lets it through)."""

    def __init__(self, core: Core) -> None:
        self.core = core

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> bool:
        if not isinstance(exc, Exception) or isinstance(exc, (LoopcheckError, Warning)):
            return False  # no error, ours to raise, or not an error at all (KeyboardInterrupt)
        if self.core.strict:
            return False
        self.core.stop(exc)
        return True


def _other_line(cause: object, site: Site) -> bool:
    return isinstance(cause, Site) and cause != site


def shown(names: list[str], limit: int = 5) -> str:
    """A list of names for a message, cut after ``limit``."""
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


class Core:
    """The state every event source and check shares."""

    def __init__(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"loopcheck.watch: mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.findings: list[Finding] = []
        self.counts_list: list[int] = []
        self._finding_index: dict[tuple[str, Site, int | None], int] = {}
        self.opts: list[OptRecord] = []
        self.by_opt: dict[int, OptRecord | None] = {}
        self.seen: list[object] = []  # optimizers looked up, kept alive so their ids stay theirs
        self.params: list[Tensor] = []
        self.index: dict[int, int] = {}  # id(param) -> position in params
        self.owners: list[tuple[OptRecord, ...]] = []  # the optimizers holding each one
        self.names: list[str] = []
        self.backward_count = 0
        # parameters a backward reached that no optimizer holds (position -> the backward's
        # site), judged at the next step, once every optimizer that steps has been adopted
        self.orphan_candidates: dict[int, Site] = {}
        self.orphans_reported: set[int] = set()
        self.namer: Callable[[Tensor], str | None] | None = None  # names from known modules
        # the next forward begins an iteration (after a step; and the first one is shown)
        self.awaiting_forward = True
        self.max_steps: int | None = None
        self.limit_reached = False
        self.checks = DeferredChecks(read_now=mode == "raise")
        self.trace = Trace()
        self.norms = Norms()  # what clipping returned, per optimizer and step
        self._transitions: dict[tuple, tuple[protocol.OptState, protocol.OptState, tuple]] = {}
        self._states: dict[protocol.OptState, protocol.OptState] = {}  # one object per state
        self.strict = os.environ.get("LOOPCHECK_STRICT", "") not in ("", "0")
        self.guard = Guard(self)
        self.stopped: str | None = None  # why the watch stopped checking, if it did

    # ----------------------------------------------------------------- optimizers, parameters

    @property
    def multi(self) -> bool:
        return len(self.opts) > 1

    def add_param(self, param: Tensor, name: str) -> int:
        i = self.index.get(id(param))
        if i is None:
            i = self.index[id(param)] = len(self.params)
            self.params.append(param)
            self.owners.append(())
            self.names.append(name)
        elif name and not self.names[i]:
            self.names[i] = name
        return i

    def add_optimizer(self, opt: torch.optim.Optimizer) -> OptRecord:
        o = OptRecord(len(self.opts), opt)
        self.opts.append(o)
        self.by_opt[id(opt)] = o
        self.seen.append(opt)
        for param in o.params:
            i = self.add_param(param, "")
            if o not in self.owners[i]:
                self.owners[i] += (o,)
            o.positions.append(i)
        o.position_set = frozenset(o.positions)
        return o

    def retire(self, old: OptRecord) -> None:
        """A newer optimizer holds ``old``'s parameters (an optimizer made again for a new
        phase): ``old`` no longer receives their events, until it steps again."""
        old.retired = True
        old.state = protocol.UNKNOWN
        old.had_grads = False
        old.after_step = False
        for i in old.positions:
            self.owners[i] = tuple(o for o in self.owners[i] if o is not old)

    def revive(self, o: OptRecord) -> None:
        """A retired optimizer stepped after all: watch it again, from no claim."""
        o.retired = False
        for i in o.positions:
            if o not in self.owners[i]:
                self.owners[i] += (o,)

    def name(self, param: Tensor) -> str:
        i = self.index.get(id(param))
        if i is not None and self.names[i]:
            return self.names[i]
        named = self.namer(param) if self.namer is not None else None
        if named:
            return named
        for o in self.opts:
            for g, group in enumerate(o.opt.param_groups):
                for j, p in enumerate(group["params"]):
                    if p is param:
                        prefix = f"optimizer[{o.index}]." if self.multi else ""
                        return f"{prefix}param_groups[{g}]['params'][{j}]"
        return f"<parameter {tuple(param.shape)}>"

    def step_index(self) -> int:
        return self.opts[0].steps if self.opts else 0

    def label(self, label: str, o: OptRecord) -> str:
        return f"{label}[{o.index}]" if self.multi else label

    # ----------------------------------------------------------------- into the protocol

    def feed(
        self,
        o: OptRecord,
        move: Move,
        site: Site,
        *,
        label: str | None = None,
        scaled: bool = False,
        divided: bool | None = None,
        via_scaler: bool = False,
        ignore: tuple[str, ...] = (),
    ) -> None:
        """Give ``move`` to optimizer ``o``'s protocol state; ``label`` is its name in the trace
        (None: the move's own, "": not shown)."""
        if o.after_step and move is Move.ZERO:
            self.new_iteration(o)
        if move is Move.STEP and o.held:
            self._judge_held(o)
        o.state, violations = self._advance(o.state, move, site, scaled, divided, via_scaler)
        o.site_steps[site] = o.steps
        if label != "":
            self.trace.event(self.label(label or move.value, o))
        if move is Move.STEP:
            o.after_step = True
            self.awaiting_forward = True
        for violation in violations:
            if violation.code in ignore:
                continue
            if violation.code == "LC108" and _other_line(violation.cause, site):
                # The lost backward came from another line than this one: not a micro-batch
                # cleared inside an accumulation loop, but, say, a GAN generator's backward
                # that reached the discriminator, whose gradients it was right to clear.
                continue
            blamed = violation.where
            where = Where(blamed, o.site_steps.get(blamed, o.steps), o.index)
            if violation.code == "LC108":
                o.held[(where, violation.cause)] = None
                continue
            self.emit(violation.code, where)

    def _judge_held(self, o: OptRecord) -> None:
        """At a step: gradients of a backward were cleared before any step used them, and a
        backward from the same line followed (LC108). It is a cleared micro-batch only if this
        step's gradients come from that line: a generator cleared every iteration, whose
        gradients from the critic's backward were never meant for it and whose steps follow
        its own backward (WGAN-GP's n_critic), is not one. Without a step at all, it is LC105
        at the end of the watch."""
        for where, cause in o.held:
            if cause in o.sites:
                self.emit("LC108", where)
        o.held.clear()

    def _advance(
        self,
        state: protocol.OptState,
        move: Move,
        site: Site,
        scaled: bool = False,
        divided: bool | None = None,
        via_scaler: bool = False,
    ) -> tuple[protocol.OptState, tuple[protocol.Violation, ...]]:
        """protocol.advance, remembered: a training loop repeats the same few transitions.

        Keyed by the state's identity (hashing its sixteen fields at every move costs more
        than the rest of the move): new states are interned, so that equal states are one
        object and a loop's transitions repeat; each entry keeps its state alive and checks it
        is the same object, so an identity cannot be mistaken for a freed one's."""
        key = (id(state), move, site, scaled, divided, via_scaler)
        known = self._transitions.get(key)
        if known is None or known[0] is not state:
            if len(self._transitions) >= 4096:
                self._transitions.clear()
                self._states.clear()
            event = Event(move, site, scaled, divided, via_scaler)
            new, violations = protocol.advance(state, event)
            new = self._states.setdefault(new, new)
            known = self._transitions[key] = (state, new, violations)
        return known[1], known[2]

    def new_iteration(self, o: OptRecord) -> None:
        if self.limit_reached:
            raise StepLimitReached(self)
        o.after_step = False
        o.state, _ = self._advance(o.state, Move.ITERATION, NO_SITE)

    # ----------------------------------------------------------------- findings out

    def emit(self, code: str, where: Where, detail: str = "") -> None:
        """Report a finding: recorded once per (code, place, optimizer), counted, and warned
        (once) or raised as the mode says."""
        finding = make_finding(
            code, where.step, detail, where.site.file, where.site.line, where.optimizer
        )
        self.trace.code(code)
        key = (code, where.site, where.optimizer)
        index = self._finding_index.get(key)
        if index is None:
            self._finding_index[key] = len(self.findings)
            self.findings.append(finding)
            self.counts_list.append(1)
        else:
            self.counts_list[index] += 1
        if self.mode == "raise":
            raise LoopcheckError(str(finding), finding)
        if self.mode == "warn" and index is None:
            if finding.file:
                warnings.warn_explicit(str(finding), LoopcheckWarning, finding.file, finding.line)
            else:
                warnings.warn(str(finding), LoopcheckWarning, stacklevel=2)

    def stop(self, exc: Exception) -> None:
        """Stop checking after an error of the watch's own; the training goes on."""
        self.stopped = f"{type(exc).__name__}: {exc}"
        warnings.warn(
            f"loopcheck: the watch stopped checking after an internal error ({self.stopped}); "
            "training goes on unwatched. Please report it.",
            LoopcheckWarning,
            stacklevel=3,
        )

    # ----------------------------------------------------------------- gradients cleared or
    # rewritten by hand: no hook sees `p.grad = None`, so look when it matters

    def settle(self, o: OptRecord, site: Site, at_backward: bool) -> None:
        """Before a move on ``o``'s gradients: were they cleared (or rewritten) by hand?"""
        grads = o.state.grads
        if not o.had_grads or grads is Grads.CLEAR or grads is Grads.UNKNOWN:
            return
        for param in o.params:
            if param.grad is not None:
                break
        else:
            if o.cleared_at is not None:  # seen being written: its own line
                self.on_zero(o, o.cleared_at, "p.grad=None")
            else:
                self.on_zero(o, site, "zero(by hand)")
            return
        if at_backward and grads is Grads.STALE and self._edited_since_step(o):
            self.feed(o, Move.OPAQUE, site, label="grads-edited")

    def _edited_since_step(self, o: OptRecord) -> bool:
        for grad, record in zip(map(GRAD, o.params), o.applied, strict=True):
            if record is None:
                if grad is not None:
                    return True
            elif grad is None or record[0]() is not grad or grad._version != record[1]:
                return True
        return False

    def on_zero(self, o: OptRecord, site: Site, label: str = "zero") -> None:
        """``o``'s gradients were cleared."""
        if o.rep is not None and o.state.grads in (Grads.FRESH, Grads.PILED):
            i, _, _, version = o.rep
            if self.params[i]._version != version:
                # parameters moved since the backward without a step (SAM's first_step, a
                # manual update): the gradients were used
                self.feed(o, Move.GRAD_ACCESS, site, label="params-edited")
        self.feed(o, Move.ZERO, site, label=label)
        o.had_grads = False
        o.cleared_at = None
        o.sites.clear()
        o.clip = None
        o.clipped_last = False
        o.rep = None

    def note_gradients(self, o: OptRecord, first: int) -> None:
        """A backward just wrote ``o``'s gradients: remember one of them, and its parameter's
        version, to notice later edits by hand."""
        param = self.params[first]
        grad = param.grad
        o.rep = None if grad is None else (first, id(grad), grad._version, param._version)
        o.cleared_at = None

    def refresh_rep(self, o: OptRecord) -> None:
        """The watch's own sources rewrote ``o``'s gradients (clipping, unscaling): not by hand."""
        if o.rep is None:
            return
        i, _, _, version = o.rep
        grad = self.params[i].grad
        o.rep = None if grad is None else (i, id(grad), grad._version, version)

    def rewritten(self, o: OptRecord) -> bool:
        """Were ``o``'s gradients rewritten by hand since the last backward (``p.grad.mul_``)?"""
        if o.rep is None:
            return False
        i, grad_id, grad_version, _ = o.rep
        grad = self.params[i].grad
        return grad is not None and (id(grad) != grad_id or grad._version != grad_version)
