"""The runtime observer: ``loopcheck.watch`` checks a real training loop while it runs.

Importing this package needs no torch; calling :func:`watch` does, and says so when it is
missing. The design is in docs/runtime.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from loopcheck.runtime.findings import Finding

if TYPE_CHECKING:
    import torch

    from loopcheck.runtime.watcher import Watch

__all__ = ["Finding", "assert_equivalent_updates", "watch", "watch_all"]


def _require_torch(what: str) -> None:
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"{what} needs PyTorch: pip install 'loopcheck[torch]' (the linter does not)"
        ) from exc


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
    _require_torch("loopcheck.watch")
    from loopcheck.runtime.watcher import Watch

    return Watch(opt, model, mode=mode, scalers=scaler, schedulers=scheduler)


def watch_all(*, mode: str = "warn", max_steps: int | None = None) -> Watch:
    """Watch every optimizer, LR scheduler and GradScaler constructed while the ``with`` block
    runs, from its construction, and the modules whose forward runs in it::

        with loopcheck.watch_all(mode="raise") as w:
            model = Net()
            opt = torch.optim.AdamW(model.parameters())
            train(model, opt)

    An optimizer made before the block is watched from its first ``step()``. A parameter that
    receives a gradient but is in no optimizer is LC602. ``max_steps`` ends the block (with
    :class:`~loopcheck.runtime.watcher.StepLimitReached`, which the block's exit swallows) at
    the start of the iteration after an optimizer's ``max_steps``-th step. This is what
    ``loopcheck run`` and the pytest marker use.
    """
    _require_torch("loopcheck.watch_all")
    from loopcheck.runtime.watcher import Watch

    return Watch(None, mode=mode, scope=True, max_steps=max_steps)


def assert_equivalent_updates(
    full: Callable[[], Any],
    accumulated: Callable[[], Any],
    *,
    rtol: float = 1e-4,
    atol: float = 1e-6,
    seed: int = 0,
) -> None:
    """Assert that N accumulated micro-batches give the full batch's update (LC206).

    ``full`` and ``accumulated`` run the user's own training code (at least one optimizer
    step): once on a batch in one go, once on the same batch as N micro-batches. See
    :func:`loopcheck.runtime.equivalence.assert_equivalent_updates`::

        def test_accumulation_is_the_full_batch():
            loopcheck.assert_equivalent_updates(
                lambda: train(batch, micro_batches=1), lambda: train(batch, micro_batches=4)
            )
    """
    _require_torch("loopcheck.assert_equivalent_updates")
    from loopcheck.runtime import equivalence

    equivalence.assert_equivalent_updates(full, accumulated, rtol=rtol, atol=atol, seed=seed)
