"""The actions the path interpreter runs: events to send to optimizers, backward calls to
bind to the optimizers their loss reaches, calls to follow, notes about the loops."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import libcst as cst

from loopcheck.protocol import Event

if TYPE_CHECKING:
    from loopcheck.static.classes import ClassInfo
    from loopcheck.static.dataflow import Origin
    from loopcheck.static.index import FileContext
    from loopcheck.static.model import Site
    from loopcheck.static.roles import Obj


@dataclass(frozen=True)
class Emit:
    """Send an event to some optimizers (``keys``); ``None`` means every known optimizer.
    A ``gate`` is a fact the event depends on (Accelerate's ``sync_gradients`` inside
    ``accumulate``, a DeepSpeed accumulation boundary): paths where it is false skip it."""

    event: Event
    keys: tuple[str, ...] | None
    only_if_single: bool = False  # with keys None: only when one optimizer is known
    gate: str | None = None


@dataclass(frozen=True)
class Backward:
    """A backward call; which optimizers it feeds is decided per path from the loss's origin."""

    site: Site
    scaled: bool
    divided: bool | None
    origin: Origin
    computed_without_grad: bool = False  # the loss was computed in the no-grad block it is in
    handed_at: Site | None = None  # the caller's call that handed the loss in
    # a loss handed with its optimizer to code we cannot see (``loss_scaler(loss, optimizer)``
    # of another package): surely backpropagated there, for what eval mode means (LC503),
    # while what it did to the optimizer stays unknown
    probe: bool = False
    # ``backward(retain_graph=True)``: the graph will be run backward again, by a second
    # backward of the same iteration (Opacus's ghost clipping backpropagates the mean loss for
    # the per-sample norms, clears, then backpropagates the rescaled loss): clearing what
    # this one left is the point, not a lost micro-batch (no LC108)
    retains: bool = False


@dataclass(frozen=True)
class Follow:
    """Interpret a function or lambda defined in a linted file, with arguments bound."""

    node: cst.FunctionDef | cst.Lambda
    bound: tuple[tuple[str, Obj | None], ...]
    cls: ClassInfo | None
    constants: tuple[tuple[str, object], ...] = ()  # parameters bound to literal values
    # parameters bound to a condition of the caller (``update_grad=(i + 1) % n == 0``): a
    # branch on them is a branch on that condition, with the caller's facts
    ctx: FileContext | None = None  # the file that defines it (None: the caller's)
    conditions: tuple[tuple[str, cst.BaseExpression, FileContext], ...] = ()
    # parameters bound to an object the caller may hold as None (its own parameter, or a name
    # it sets to None somewhere): ``if scaler is not None:`` is a branch, not a certainty
    maybe_none: frozenset[str] = frozenset()
    # losses handed in, with whether the caller divided them (``loss_scaler(loss, ...)`` after
    # ``loss /= accum_iter``): a backward of the parameter is a backward of the caller's loss
    divided: tuple[tuple[str, bool | None], ...] = ()
    site: Site | None = None  # the call, when it hands a loss in
    called_at: Site | None = None  # the call
    # parameters handed values of no role (tensors, losses): what the caller passed
    tensors: tuple[tuple[str, cst.BaseExpression], ...] = ()


@dataclass(frozen=True)
class Alternatives:
    """One of several callees runs (a method overridden in subclasses): paths of each."""

    follows: tuple[Follow, ...]


@dataclass(frozen=True)
class Mark:
    """Note something about the enclosing loops (no protocol effect)."""

    what: str


@dataclass(frozen=True)
class Forward:
    """A model run forward (called): which model (its key, when known) and where; ``graph``
    is False for a model with no trainable parameter (its forward records no graph of its
    own)."""

    site: Site
    key: str | None
    graph: bool = True


@dataclass(frozen=True)
class Mode:
    """``model.eval()`` or ``model.train()``: the model's mode on the paths from here. With
    no key, any model's mode may have changed (a framework's hooks ran): none is known to
    be in eval mode any more."""

    site: Site
    key: str | None
    training: bool


@dataclass(frozen=True)
class Evaluations:
    """An optimizer that evaluates its closure many times in one ``step(closure)`` (L-BFGS):
    the closure and the update after it run as the body of a loop at the call, so that a
    closure that never clears piles the gradients of one evaluation onto the next."""

    call: cst.Call
    closure: Follow
    update: tuple[Emit, ...]  # the step after each evaluation


Action = Emit | Backward | Follow | Alternatives | Mark | Forward | Mode | Evaluations
