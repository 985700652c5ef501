"""What a call the linter cannot see into may do with what it is handed: step or clear the
optimizers (unless it only sets their learning rate, saves them, or hands them back
wrapped), run the model's backward (when it is named for training), or only compute a loss."""

from __future__ import annotations

import re

import libcst as cst

from loopcheck.protocol import Event, Move
from loopcheck.static.bodies import function_layout
from loopcheck.static.host import HostView
from loopcheck.static.moves import Action, Emit, Mark
from loopcheck.static.roles import Role, builds_engine
from loopcheck.static.syntax import call_args, chains_in, dotted, literal


class OpaqueCalls(HostView):
    """The half of the API reader that answers for calls it cannot see into."""

    def opaque_args(self, call: cst.Call, only: frozenset[int] | None = None) -> list[Action]:
        """A call we cannot see into: optimizers it receives may have been stepped or cleared;
        a model it receives may have been run backward (``only``: the ids of the argument
        values that may go anywhere, when the others are known to stay put)."""
        keys: list[str] = []
        model = False
        for arg in call.args:
            if only is not None and id(arg.value) not in only:
                continue
            obj = (
                self.frame.resolve(arg.value)
                if type(arg.value) in (cst.Name, cst.Attribute, cst.Subscript)
                else None
            )
            if obj is None:
                continue
            if obj.role is Role.ENGINE and self._not_yet_engine(arg.value):
                model = True  # the module handed on before ``deepspeed.initialize`` wraps it
            elif obj.role in (Role.OPTIMIZER, Role.ENGINE):
                if not self._hands_back(call, arg.value):
                    keys.extend(obj.members or (obj.key,))
            elif obj.role in (Role.MODEL, Role.LIGHTNING):
                model = True
        actions: list[Action] = []
        called = dotted(call.func) or ""
        if keys and _KEEPS_GRADS.search(called.rsplit(".", 1)[-1]):
            # ``self._update_learning_rate(self.policy.optimizer)`` sets the learning rate,
            # ``utils.restart_from_checkpoint(path, optimizer=optimizer)`` loads a state: no
            # gradient is touched
            keys = []
        if keys:
            actions.append(Emit(Event(Move.OPAQUE), tuple(keys)))
        if model and not keys and _LOSS_FUNCTION.search(called) and not _RUNS_STEP.search(called):
            # ``diffusion.training_losses(model, x, t)``: named for the loss it returns, it
            # runs the model forward to compute it, not backward
            actions.append(Mark("forward"))
        elif model:
            only = _forward_only(call)
            trains = not only if only is not None else MAY_TRAIN.search(called.rsplit(".", 1)[-1])
            actions.append(Mark("opaque_model" if trains else "opaque_aside"))
        return actions

    def _hands_back(self, call: cst.Call, expr: cst.BaseExpression) -> bool:
        """``model, optimizer, loader = engine.make_private(optimizer=optimizer, ...)``,
        ``optimizer = hvd.DistributedOptimizer(optimizer)``: the call wraps the optimizer and
        hands it back under its own name, where every later clear and step is seen; it
        applies no gradient itself."""
        at = self.host.at
        name = dotted(expr)
        return (
            type(at) is cst.SimpleStatementLine
            and name is not None
            and any(
                type(statement) is cst.Assign
                and statement.value is call
                and any(name in chains_in(t.target) for t in statement.targets)
                for statement in at.body
            )
        )

    def _not_yet_engine(self, expr: cst.BaseExpression) -> bool:
        """``model`` handed on before ``model, *_ = deepspeed.initialize(model=model)`` rebinds
        it (``get_optimizer_grouped_parameters(model, ...)``): there it is still the module."""
        at = self.host.at
        if type(expr) is not cst.Name or at is None or self.frame.func is None:
            return False
        name = expr.value
        if not any(self._builds_engine(v) for _, v in self.frame.tuple_values.get(name, ())):
            return False  # an engine handed in, or built some other way
        defs = function_layout(self.frame).reaching(name, at)
        return not any(self._builds_engine(d.value) for d in defs or ())

    def _builds_engine(self, value: cst.BaseExpression) -> bool:
        if type(value) is not cst.Call or type(value.func) not in (cst.Name, cst.Attribute):
            return False
        qual = self.frame.ctx.imports.qualify(value.func)
        return qual is not None and builds_engine(qual)


# the names of unseen calls handed the model that may run its backward
MAY_TRAIN = re.compile(
    r"(?i)backward|backprop|step|optimi|(?<!pre)train|fit|update|learn|loss|forward|grad"
    r"|closure|^run$|^run_|1f1b"
)
# the names of unseen calls handed an optimizer (or an engine) that set its learning rate,
# save or load its state, log or check it, or convert or export the model it holds, and do
# no more
_KEEPS_GRADS = re.compile(
    r"(?i)^_*(update|adjust|set|warmup|decay)_?(the_)?(learning_rate|lr)s?$"
    r"|checkpoint|^_*(save|load|resume|restore|restart)(_|$)|^_*log(_|$)|^print"
    r"|^_*(maybe|try)_(save|load)(_|$)"  # HiFi-GAN's ``checkpointer.maybe_save(...)``
    r"|^_*(convert|export|merge|unwrap)_"
    r"|sanity_checks?$|^_*(assert|check)_"  # nanotron's ``before_optim_step_sanity_checks``
)
_LOSS_FUNCTION = re.compile(r"(?i)(^|[._])\w*losses?$")
_RUNS_STEP = re.compile(r"(?i)backward|step|optimi")  # ``forward_backward_loss``


def _forward_only(call: cst.Call) -> bool | None:
    """``schedule(..., model=model, forward_only=False)``: Megatron's pipeline schedules run
    the backward passes too unless told ``forward_only=True``; None when the call says
    nothing of it."""
    value = call_args(call)[1].get("forward_only")
    if value is None:
        return None
    return literal(value) == (True, True)
