"""The per-step trace of a watched run and its report, as text or JSON.

Pure Python. Events are grouped into *windows*, each ending with an optimizer step; consecutive
windows with the same events and findings are merged, so that a long healthy run stays a few
lines and a bounded amount of memory.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field

from loopcheck.runtime.findings import Finding


@dataclass
class Window:
    """Events from the end of one optimizer step to the end of the next (or to now)."""

    optimizer: int | None
    first_step: int
    last_step: int
    events: tuple[str, ...]
    codes: tuple[str, ...] = ()
    count: int = 1

    def to_dict(self) -> dict[str, object]:
        return {
            "optimizer": self.optimizer,
            "first_step": self.first_step,
            "last_step": self.last_step,
            "count": self.count,
            "events": list(self.events),
            "findings": list(self.codes),
        }


@dataclass
class Trace:
    """Records events as they happen; keeps the first and the last ``limit`` windows."""

    limit: int = 100
    head: list[Window] = field(default_factory=list)
    tail: deque[Window] = field(default_factory=deque)
    dropped: int = 0
    _events: list[str] = field(default_factory=list)
    _codes: list[str] = field(default_factory=list)

    def event(self, label: str) -> None:
        if label == "forward" and self._events and self._events[-1] == "forward":
            return  # several model calls in a row (a GAN, an eval pass) read as one
        self._events.append(label)

    def code(self, code: str) -> None:
        if code not in self._codes:
            self._codes.append(code)

    def close(self, optimizer: int | None, step: int) -> None:
        """End the current window with step ``step`` of optimizer ``optimizer``."""
        window = Window(optimizer, step, step, tuple(self._events), tuple(self._codes))
        self._events.clear()
        self._codes.clear()
        last = self.tail[-1] if self.tail else (self.head[-1] if self.head else None)
        if (
            last is not None
            and last.codes == window.codes
            and last.optimizer == window.optimizer
            and last.events == window.events
            and last.last_step + 1 == window.first_step
        ):
            last.last_step = window.last_step
            last.count += 1
            return
        if len(self.head) < self.limit:
            self.head.append(window)
            return
        self.tail.append(window)
        if len(self.tail) > self.limit:
            dropped = self.tail.popleft()
            self.dropped += dropped.count

    def windows(self) -> list[Window]:
        """Every window kept, with the events since the last step as a final open window."""
        out = [*self.head, *self.tail]
        if self._events or self._codes:
            out.append(Window(None, -1, -1, tuple(self._events), tuple(self._codes)))
        return out


def render_text(
    trace: Trace, findings: list[Finding], counts: list[int], header: str, multi: bool
) -> str:
    """The report as text: a header, the merged per-step trace, then the findings."""
    lines = [header, "", "trace (events up to and including each optimizer step):"]
    shown = trace.windows()
    for index, window in enumerate(shown):
        if index == len(trace.head) and trace.dropped:
            lines.append(f"  ... {trace.dropped} steps not kept ...")
        lines.append("  " + _window_line(window, multi))
    if not shown:
        lines.append("  (no events)")
    lines.append("")
    if not findings:
        lines.append("no findings")
    else:
        lines.append(f"findings ({len(findings)}):")
        for finding, count in zip(findings, counts, strict=True):
            times = f" (x{count})" if count > 1 else ""
            lines.append(f"  {finding}{times}")
    return "\n".join(lines) + "\n"


def render_json(trace: Trace, findings: list[Finding], counts: list[int], summary: dict) -> str:
    """The report as a JSON document."""
    return json.dumps(
        {
            **summary,
            "trace": [w.to_dict() for w in trace.windows()],
            "dropped_steps": trace.dropped,
            "findings": [
                {**f.to_dict(), "count": n} for f, n in zip(findings, counts, strict=True)
            ],
        },
        indent=2,
    )


def _window_line(window: Window, multi: bool) -> str:
    if window.first_step < 0:
        label = "(after the last step)"
    else:
        opt = f"[{window.optimizer}]" if multi and window.optimizer is not None else ""
        if window.count > 1:
            label = f"steps{opt} {window.first_step}-{window.last_step} (x{window.count})"
        else:
            label = f"step{opt} {window.first_step}"
    events = " ".join(window.events) or "-"
    codes = f"   <- {', '.join(window.codes)}" if window.codes else ""
    return f"{label:<28} {events}{codes}"
