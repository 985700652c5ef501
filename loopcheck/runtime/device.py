"""Checks and values that live on the device, read without making the host wait for them.

A check is a boolean tensor (``True``: the bug is there) and what to do when it is true. A CPU
tensor is read at once: it costs no synchronisation. A CUDA tensor is copied to pinned host
memory without blocking, behind an event; it is read once the event has passed, at a later
step, or when the watch ends. Where the caller needs the answer now (``mode="raise"``, which
must raise at the faulty event), it is read at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import NamedTuple

import torch


class Pending(NamedTuple):
    ready: Callable[[], bool]  # has the value arrived?
    wait: Callable[[], None]  # block until it has
    value: Callable[[], bool]
    on_true: Callable[[], None]


class DeferredChecks:
    def __init__(self, read_now: bool) -> None:
        self._read_now = read_now
        self._queue: deque[Pending] = deque()

    def check(self, flag: torch.Tensor, on_true: Callable[[], None]) -> None:
        if self._read_now or flag.device.type != "cuda":
            if bool(flag):
                on_true()
            return
        host = torch.empty_like(flag, device="cpu", pin_memory=True)
        host.copy_(flag, non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(flag.device))
        self.defer(Pending(event.query, event.synchronize, lambda: bool(host), on_true))

    def later(self, value: torch.Tensor, use: Callable[[float], None]) -> None:
        """Call ``use`` with the one-element tensor ``value`` read on the host: at once on the
        CPU, else once its copy has arrived (nothing is computed for it)."""
        if self._read_now or value.device.type != "cuda":
            use(float(value))
            return
        host = torch.empty_like(value, device="cpu", pin_memory=True)
        host.copy_(value.detach(), non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(value.device))
        self.defer(Pending(event.query, event.synchronize, lambda: True, lambda: use(float(host))))

    def defer(self, pending: Pending) -> None:
        self._queue.append(pending)

    def poll(self) -> None:
        """Run the checks whose values have arrived, in the order they were made."""
        queue = self._queue
        while queue and queue[0].ready():
            pending = queue.popleft()
            if pending.value():
                pending.on_true()

    def flush(self) -> None:
        """Wait for every pending value and run its check (the end of the watch, the report)."""
        queue = self._queue
        while queue:
            pending = queue.popleft()
            pending.wait()
            if pending.value():
                pending.on_true()

    def __len__(self) -> int:
        return len(self._queue)
