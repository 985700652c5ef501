"""What the walk knows of each model's mode along each path.

Gradients on or off (``no_grad`` blocks), train or eval (``eval()``/``train()`` calls, a mode
saved in a name, an eval mode left over across a loop's back edge); LC503 at a backward of a
model still in eval mode, and the forwards of a validation block inside a training loop
(LC502)."""

from __future__ import annotations

import libcst as cst

from loopcheck.static import tensors
from loopcheck.static.frames import FrameStack
from loopcheck.static.model import FileModel, LoopSummary, Record, RootSummary, Site, overlap
from loopcheck.static.moves import Backward, Forward, Mode
from loopcheck.static.paths import PathState
from loopcheck.static.roles import Role


class ModeRecorder(FrameStack):
    """The interpreter's half that follows models' modes (see ``Recorder`` for the rest)."""

    model: FileModel
    loop_stack: list[LoopSummary]
    root: RootSummary | None
    fact_names: dict[str, set[str]]
    saved_modes: dict[str, str]  # names saving a model's mode (``was_training``), its key
    grad_modes: list[bool]  # innermost last: False under no_grad / inference_mode
    no_grad_blocks: list[cst.CSTNode]  # the ``with torch.no_grad():`` blocks being run

    @property
    def grad_enabled(self) -> bool:
        return self.grad_modes[-1] if self.grad_modes else True

    def note_eval_forward(self, states: set[PathState], action: Forward) -> None:
        """A forward with gradients on, of a model put in eval mode earlier in the same
        iteration on every path, in an ``if`` block of the loop that makes no training move
        (``if i % validate_every == 0: model.eval(); loss = model(val_batch)``): LC502 in a
        training loop."""
        call = action.site.node
        if type(call) is not cst.Call or type(call.func) not in (cst.Name, cst.Attribute):
            return
        if self.frame.resolve(call.func) is None:
            return  # ``model.generate(...)``: a method, often run without gradients inside
        if tensors.switches_gradients(self.ctx, self.frame.func):
            return  # ``torch.set_grad_enabled(False)`` as a statement
        sites = set()
        for state in states:
            found = [e for k, e, crossed in state.evaluating if k == action.key and not crossed]
            if not found:
                return
            sites.update(found)
        if len(sites) == 1:
            eval_site = sites.pop()
            loop = self.loop_stack[-1].node
            if isinstance(eval_site, Site) and tensors.evaluation_block(
                loop, eval_site.node, action.site.node
            ):
                entry = (action.site, eval_site, self.loop_stack[-1], self.root)
                self.model.eval_forwards.append(entry)

    def trained_in_eval_mode(self, states: set[PathState], action: Backward) -> None:
        """LC503, at the ``eval()`` that did it: a backward on a path where a model its loss
        comes from is still in eval mode. Judged at the backward, not the forward, so that a
        path that only evaluates (the ``"val"`` phase of a phase loop) is no training path."""
        models = action.origin.models
        if not models or not self.grad_enabled or not self.loop_stack:
            return
        trained = [self.known_models(k) for k in self.known()]
        for state in states:
            for key, eval_site, crossed in state.evaluating:
                if not crossed or not overlap(frozenset({key}), models):
                    continue  # eval() right before training in one pass: frozen on purpose
                if (
                    trained
                    and all(trained)
                    and not any(overlap(frozenset({key}), m) for m in trained)
                ):
                    continue  # no optimizer in sight trains it: a frozen backbone (probing)
                # the loop where the evaluation and the training meet (seen from here: the
                # helpers' own loops know nothing of their callers)
                loop = next((s for s in reversed(self.loop_stack) if eval_site in s.sites), None)
                if loop is not None:
                    root = self.frames[0] if self.frames else None
                    scope, _, name = key.partition(":")
                    handed_in = root is not None and scope == root.scope and name in root.params
                    self.model.add_record(
                        Record("LC503", eval_site, key, loop, self.root, action.site, handed_in)
                    )

    def mode(self, state: PathState, action: Mode) -> PathState:
        if action.key is None:
            return state.with_evaluating(frozenset())
        if not action.training and any(
            self.saved_modes.get(text) == action.key and not value for text, value in state.facts
        ):
            # the mode was saved as eval on this path (``was_training = model.training`` while
            # an earlier ``eval()`` froze it): this ``eval()`` changes nothing, the earlier
            # one stands
            return state
        keys = frozenset({action.key})
        me = self.frame.bound.get("self")
        if (
            action.training
            and me is not None
            and me.cls is not None
            and me.role is not Role.INSTANCE
        ):
            # (not in a trainer's method: ``self.criterion.train()`` leaves ``self.model`` be)
            if action.key.startswith(f"{me.cls.name}."):
                # ``self.head.train()`` in a method of the model (``model.train_custom()``): the
                # model's own training mode, its frozen parts left in eval on purpose
                keys |= {me.key}
        kept = frozenset(
            entry for entry in state.evaluating if not overlap(frozenset({entry[0]}), keys)
        )
        if not action.training:
            kept |= {(action.key, action.site, False)}
        return state.with_evaluating(kept)

    def save_mode(
        self, states: set[PathState], name: str, model: cst.BaseExpression
    ) -> set[PathState]:
        """``was_training = model.training``: true on the paths where the model is not in
        eval mode (as far as they know), false where an ``eval()`` left it so."""
        held = self.frame.resolve(model)
        if held is None or held.role is not Role.MODEL:
            return states
        self.fact_names.setdefault(name, {name})
        self.saved_modes[name] = held.key
        key = frozenset({held.key})
        return {
            s.with_fact(name, not any(overlap(frozenset({k}), key) for k, _, _ in s.evaluating))
            for s in states
        }

    def carry_eval_mode(self, state: PathState, summary: LoopSummary) -> PathState:
        """The back edge of a loop that put a model in eval mode: from here on that mode is
        left over from an earlier iteration (LC503 if the model trains in it)."""
        if not any(not crossed and site in summary.sites for _, site, crossed in state.evaluating):
            return state
        return state.with_evaluating(
            frozenset(
                (key, site, crossed or site in summary.sites)
                for key, site, crossed in state.evaluating
            )
        )
