"""loopcheck: finds the training-loop bugs that never raise an error.

The linter (``loopcheck.api.lint_source``, the ``loopcheck`` command) needs only libcst; the
runtime side (``loopcheck.watch``, ``loopcheck.watch_all``,
``loopcheck.assert_equivalent_updates``) needs torch and is imported on first use.
"""

from __future__ import annotations

from typing import Any

from loopcheck.errors import LoopcheckError, LoopcheckWarning

__version__ = "0.1.0"
__all__ = [
    "LoopcheckError",
    "LoopcheckWarning",
    "__version__",
    "assert_equivalent_updates",
    "watch",
    "watch_all",
]


def __getattr__(name: str) -> Any:
    if name in ("watch", "watch_all", "assert_equivalent_updates"):
        from loopcheck import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module 'loopcheck' has no attribute {name!r}")
