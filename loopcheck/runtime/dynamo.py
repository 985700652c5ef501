"""Keeps torch.compile out of the watch's own code: its frames are never compiled.

Code compiled by ``torch.compile`` can call the watch's hooks (a backward started after a graph
break runs the post-accumulate-grad hooks while dynamo's frame callback is active): dynamo would
then compile the hooks themselves, guard on the watch's state and warn about what it cannot
trace. Every code object of the runtime's modules is marked to be run as plain Python, once
dynamo is loaded (importing it takes seconds: the watch does not, and checks again at each
step). Calls from code that dynamo traces into the watch's wrappers go straight to the original
(see :data:`loopcheck.runtime.patching.bypass`).
"""

from __future__ import annotations

import inspect
import sys
import types
from collections.abc import Iterable

_done = False


def _code_objects(code: types.CodeType) -> Iterable[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


def _functions(namespace: dict[str, object], module: str) -> Iterable[types.FunctionType]:
    for value in namespace.values():
        if isinstance(value, types.FunctionType) and value.__module__ == module:
            yield value
        elif inspect.isclass(value) and value.__module__ == module:
            for member in vars(value).values():
                member = getattr(member, "fget", member)  # properties
                member = getattr(member, "__func__", member)  # static and class methods
                if isinstance(member, types.FunctionType):
                    yield member


def skip_modules(modules: Iterable[types.ModuleType]) -> None:
    """Mark every function of ``modules`` (nested ones included) as code dynamo must skip."""
    try:
        from torch._dynamo.eval_frame import skip_code
    except ImportError:  # another torch: nothing to mark
        return
    for module in modules:
        for function in _functions(vars(module), module.__name__):
            for code in _code_objects(function.__code__):
                skip_code(code)


def keep_out() -> None:
    """Mark the runtime's code, if dynamo is loaded and it was not done yet (cheap to call)."""
    global _done
    if _done or "torch._dynamo.eval_frame" not in sys.modules:
        return
    _done = True
    skip_modules(
        m
        for name, m in list(sys.modules.items())
        # the wrappers must stay traceable: dynamo inlines them (and goes straight through)
        if name.startswith("loopcheck.runtime") and name != "loopcheck.runtime.patching"
    )
