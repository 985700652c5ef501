"""What the way a function uses a name says about it: an engine (handed a loss and stepped),
a namespace of options (read for attributes no optimizer has), and the attribute chains it
steps or clears (optimizers held by other objects)."""

from __future__ import annotations

import libcst as cst

from loopcheck.static.index import FileContext
from loopcheck.static.syntax import engine_names
from loopcheck.static.tree import walk

# What code reads of an optimizer (anything else read of a name makes it a namespace).
_OPTIMIZER_API = frozenset(
    {
        "step", "zero_grad", "param_groups", "state", "state_dict", "load_state_dict",
        "add_param_group", "defaults", "optimizer", "register_step_pre_hook",
        "register_step_post_hook", "train", "eval", "synchronize", "skip_synchronize",
        "consolidate_state_dict", "backward", "clip_grad_norm", "clip_grad_norm_",
        "update_lr", "step_and_update_lr", "get_lr", "lr", "module", "param_groups_",
    }
)  # fmt: skip
_OPTIMIZER_CORE = frozenset({"step", "zero_grad", "param_groups", "state_dict", "load_state_dict"})


def used_as_engine(ctx: FileContext, func: cst.FunctionDef | None, name: str) -> bool:
    """Whether ``func`` (the module body when None) hands ``name`` a loss to backpropagate
    and steps it (``distr_vae.backward(loss)`` then ``distr_vae.step()``): a DeepSpeed-style
    engine, whatever it is called and however it was made (``distr_vae, ... =
    backend.distribute(...)``). A tensor's ``backward`` takes no loss and a tensor has no
    ``step``."""
    body = func.body if func is not None else ctx.module
    return name in ctx.remember("engines", body, lambda: engine_names(ctx.method_calls(body)))


def read_as_settings(ctx: FileContext, func: cst.FunctionDef | None, name: str) -> bool:
    """Whether ``func`` (the module body when None) reads attributes of ``name`` that no
    optimizer has (``opt.batch_size``, ``opt.trg_pad_idx``) and none that every optimizer
    has: a namespace of options."""

    def read() -> bool:
        attrs = {
            node.attr.value
            for node in walk(func.body if func is not None else ctx.module)
            if type(node) is cst.Attribute
            and type(node.value) is cst.Name
            and node.value.value == name
        }
        # ``optimizer.sync_lookahead()`` beside ``optimizer.step()`` is an optimizer still
        return bool(attrs - _OPTIMIZER_API) and not attrs & _OPTIMIZER_CORE

    return ctx.remember(f"settings:{name}", func, read)


def stepped_receivers(ctx: FileContext, func: cst.FunctionDef) -> tuple[cst.Attribute, ...]:
    """The attribute chains a function steps or clears (``self.critic.optimizer`` in
    ``self.critic.optimizer.step()``), found once per function."""
    return ctx.remember(
        "stepped-receivers",
        func,
        lambda: tuple(
            node.func.value
            for node in walk(func.body)
            if type(node) is cst.Call
            and type(node.func) is cst.Attribute
            and node.func.attr.value in {"step", "zero_grad"}
            and type(node.func.value) is cst.Attribute
        ),
    )
