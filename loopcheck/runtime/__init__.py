"""The runtime observer: ``loopcheck.watch`` checks a real training loop while it runs.

Importing this package needs no torch; calling :func:`watch` does, and says so when it is
missing. The design is in docs/runtime.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from loopcheck.runtime.findings import Finding

if TYPE_CHECKING:
    import torch

    from loopcheck.runtime.watcher import Watch

__all__ = ["Finding", "watch"]


def watch(
    opt: torch.optim.Optimizer | Iterable[torch.optim.Optimizer],
    model: torch.nn.Module | Iterable[torch.nn.Module] | None = None,
    *,
    mode: str = "warn",
    scaler: Any = None,
    scheduler: Any = None,
) -> Watch:
    """Watch ``opt`` (one optimizer or several) and ``model`` while a ``with`` block runs.

    ``mode="warn"`` issues a :class:`loopcheck.LoopcheckWarning` once per code and place,
    ``"raise"`` raises :class:`loopcheck.LoopcheckError` at the faulty event, ``"record"`` only
    collects. ``scaler`` (a GradScaler) and ``scheduler`` (an LR scheduler; either may be a
    list) let the watch see AMP scaling and schedule steps. After the block, ``w.findings``
    holds the findings and ``w.report()`` the per-step trace (``report("json")`` for JSON)::

        with loopcheck.watch(opt, model) as w:
            train()
        assert not w.findings, w.report()
    """
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "loopcheck.watch needs PyTorch: pip install 'loopcheck[torch]' (the linter does not)"
        ) from exc
    from loopcheck.runtime.watcher import Watch

    return Watch(opt, model, mode=mode, scalers=scaler, schedulers=scheduler)
