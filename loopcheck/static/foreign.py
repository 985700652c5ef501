"""What a call into another library cannot do, judged by its name alone.

Builtins and loggers only look at what they are given, helpers named for averaging gradients
across processes neither clear nor step, checkpoint savers keep nothing, step-like methods
may or may not step an optimizer, and pipeline schedules are no LR schedules. The reader asks
these where it cannot see into a callee."""

from __future__ import annotations

import re

import libcst as cst

from loopcheck.static.roles import steps_no_optimizer
from loopcheck.static.syntax import dotted

# Builtins that only look at what they are given (``isinstance(optimizers, list)``).
LOOKS_ONLY = frozenset(
    {"isinstance", "len", "type", "id", "print", "hasattr", "str", "repr", "callable"}
)


def is_pipeline_schedule(receiver: cst.BaseExpression, call: cst.Call) -> bool:
    """``pp_schedule.step(x, target=y, losses=losses)``: a pipeline-parallel schedule (torch's
    ``ScheduleGPipe``, ``Schedule1F1B``) handed micro-batches, not an LR schedule (whose
    ``step()`` takes none)."""
    name = (dotted(receiver) or "").rsplit(".", 1)[-1].lower()
    return name.endswith("schedule") and "lr" not in name and bool(call.args)


_HARMLESS_CALLS = {
    *LOOKS_ONLY,
    "getattr",
    # iterating over optimizers (``for opt, sched in zip(optimizers, schedulers)``)
    "zip",
    "enumerate",
    "reversed",
    "vars",
    "dir",
    "format",
    "sum",
    "copy.deepcopy",
    "torch.save",
    "pprint.pprint",
    # apex's mixed precision: the parameters an optimizer holds, a loss scaled for its
    # backward, and a model and optimizer handed back patched (neither stepped nor cleared)
    "apex.amp.master_params",
    "apex.amp.scale_loss",
    "apex.amp.initialize",
}
# Helpers named for averaging gradients across processes (``mpi_avg_grads``,
# ``average_gradients``, ``allreduce_grads``), seen from outside the linted files.
_GRAD_COLLECTIVE = re.compile(
    r"(?i)(^|[._])(mpi_)?(avg|average|all_?reduce|sync|reduce)_?(grads?|gradients)$"
)
_CLEARS_TOO = re.compile(r"(?i)zero|clear|clip|reset|step")  # ``zero_and_sync_grads``
_HARMLESS_PREFIXES = ("logging.", "logger.", "log.", "wandb.", "mlflow.", "tqdm.")


def harmless_call(qual: str) -> bool:
    """Calls that receive an optimizer or model only to look at it."""
    return qual in _HARMLESS_CALLS or qual.startswith(_HARMLESS_PREFIXES)


def averages_gradients(qual: str) -> bool:
    """A helper of another library named for averaging gradients across processes, which
    neither clears nor steps (``mpi_avg_grads``, not ``zero_and_sync_grads``)."""
    return bool(_GRAD_COLLECTIVE.search(qual)) and not _CLEARS_TOO.search(qual)


# ``sl.set_step(n)``, ``logger.log_step(...)``: a counter set or read, no step taken.
_ACCESSOR = re.compile(r"(set|get|log|is|should)_")
_STEP_WORD = re.compile(r"(^|_)[Ss]tep($|_)|[a-z]Step($|_|[A-Z])")


def may_step_unresolved(method: str, receiver: cst.BaseExpression) -> bool:
    """Whether a step-like method on a receiver we cannot resolve may step an optimizer
    (``self.optimizers[0].step()``, ``trainer.optimizer_step()``): not an environment's or a
    profiler's ``step()``, a counter's setter, nor a name where "step" is part of another
    word (``save_and_remove_state_stepwise``)."""
    return (
        bool(_STEP_WORD.search(method))
        and not _ACCESSOR.match(method)
        and not persists(method)
        and not steps_no_optimizer(dotted(receiver) or "")
    )


_PERSIST = re.compile(
    r"^(save|load)(_?(checkpoint|ckpt|state|states|model|weights))?$|state_dict$"
    r"|(?i:checkpointer|checkpoint_?manager)$"
)


def persists(name: str) -> bool:
    """A function or method named for saving or loading a checkpoint, or for gathering a state
    dict, or a checkpointer built (``checkpoint.save(model, optimizer, ...)``,
    ``self.save_checkpoint(...)``, ``get_full_optimizer_state_dict(model, opt)``,
    ``DetectionCheckpointer(model, optimizer=optimizer)``): it neither clears nor steps what
    it is handed."""
    return bool(_PERSIST.search(name))
