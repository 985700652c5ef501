"""The per-step trace of a watched run, folded so that a long run stays a few lines.

Pure Python. Events are grouped into *windows*, each ending with an optimizer step. Inside a
window, a repeated group of moves is one token (``(forward backward) x4`` for accumulation,
``(zero forward backward) x3`` for LBFGS's closure evaluations). Consecutive windows with the
same moves and findings merge (``steps 0-99 (x100)``); a repeating sequence of windows (a GAN's
two optimizers, a critic stepping five times per generator step) folds into a cycle. Only the
first ``limit`` entries and about the last ``limit`` are kept: memory stays bounded however long
the run.
"""

from __future__ import annotations

import copy
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Union

from loopcheck.runtime.findings import Finding

# Events kept per window at most (a window with no step -- a loop that never steps -- grows)
_MAX_EVENTS = 4096
_MAX_PERIOD = 4  # longest repeated group looked for, in moves and in windows


@dataclass
class Token:
    """Moves repeated ``low``..``high`` times in a row (once: ``low == high == 1``)."""

    moves: tuple[str, ...]
    low: int = 1
    high: int = 1

    def key(self) -> tuple[tuple[str, ...], bool]:
        return self.moves, self.high > 1

    def __str__(self) -> str:
        if self.high == 1:
            return " ".join(self.moves)
        group = self.moves[0] if len(self.moves) == 1 else f"({' '.join(self.moves)})"
        times = f"{self.low}" if self.low == self.high else f"{self.low}-{self.high}"
        return f"{group} x{times}"


def tokens(events: list[str]) -> list[Token]:
    """The moves of a window with each repeated group (of up to 4 moves) made one token."""
    out: list[Token] = []
    i, n = 0, len(events)
    while i < n:
        best_period, best_times = 1, 1
        for period in range(1, _MAX_PERIOD + 1):
            group = events[i : i + period]
            if len(group) < period:
                break
            times = 1
            while events[i + times * period : i + (times + 1) * period] == group:
                times += 1
            if times > 1 and period * times > best_period * best_times:
                best_period, best_times = period, times
        moves = tuple(events[i : i + best_period])
        if best_times == 1 and out and out[-1].high == 1:
            out[-1] = Token(out[-1].moves + moves)  # single moves run together
        else:
            out.append(Token(moves, best_times, best_times))
        i += best_period * best_times
    return out


@dataclass
class Window:
    """Moves from the end of one optimizer step to the end of the next (or to now)."""

    optimizer: int | None
    first_step: int
    last_step: int
    tokens: list[Token]
    codes: tuple[str, ...] = ()
    count: int = 1

    @property
    def events(self) -> tuple[str, ...]:
        return tuple(str(t) for t in self.tokens)

    def key(self) -> tuple:
        return (self.optimizer, tuple(t.key() for t in self.tokens), self.codes)

    def steps(self) -> int:
        return self.count

    def absorb(self, other: Window) -> None:
        """Take in ``other``, the same moves right after: widen ranges and repeat counts."""
        self.last_step = other.last_step
        self.count += other.count
        for mine, theirs in zip(self.tokens, other.tokens, strict=True):
            mine.low = min(mine.low, theirs.low)
            mine.high = max(mine.high, theirs.high)

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
class Cycle:
    """A sequence of windows repeated ``repeats`` times in a row; each window's step range
    covers all the repetitions."""

    windows: list[Window]
    repeats: int = 2

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c for w in self.windows for c in w.codes))

    def key(self) -> tuple:
        return tuple((w.key(), w.count) for w in self.windows)

    def steps(self) -> int:
        return sum(w.count for w in self.windows) * self.repeats

    def to_dict(self) -> dict[str, object]:
        return {"repeats": self.repeats, "cycle": [w.to_dict() for w in self.windows]}


Entry = Union[Window, Cycle]  # noqa: UP007 (a runtime alias: Python 3.10 has no `type`)


def _follows(later: Window, earlier: Window) -> bool:
    """Does ``later`` hold the same moves as ``earlier``, the next steps of its optimizer?"""
    return (
        later.key() == earlier.key()
        and later.count == earlier.count
        and later.first_step == earlier.last_step + 1
    )


def _fold(entries: list[Entry] | deque[Entry]) -> None:
    """Fold the end of ``entries`` (all complete) into a cycle, or extend the cycle there."""
    n = len(entries)
    for period in range(2, _MAX_PERIOD + 1):
        if n <= period:
            break
        cycle = entries[n - period - 1]
        block = [entries[i] for i in range(n - period, n)]
        if (
            isinstance(cycle, Cycle)
            and len(cycle.windows) == period
            and all(isinstance(w, Window) for w in block)
            and all(_follows(w, c) for w, c in zip(block, cycle.windows, strict=True))  # type: ignore[arg-type]
        ):
            for mine, theirs in zip(cycle.windows, block, strict=True):
                mine.absorb(theirs)  # type: ignore[arg-type]
                mine.count -= theirs.count  # type: ignore[union-attr]  (a count per repeat)
            cycle.repeats += 1
            for _ in range(period):
                entries.pop()
            return
    for period in range(2, _MAX_PERIOD + 1):
        if n < 2 * period:
            break
        first = [entries[i] for i in range(n - 2 * period, n - period)]
        second = [entries[i] for i in range(n - period, n)]
        if all(isinstance(w, Window) for w in first + second) and all(
            _follows(b, a)  # type: ignore[arg-type]
            for a, b in zip(first, second, strict=True)
        ):
            for mine, theirs in zip(first, second, strict=True):
                mine.absorb(theirs)  # type: ignore[arg-type]
                mine.count -= theirs.count  # type: ignore[union-attr]  (a count per repeat)
            for _ in range(2 * period):
                entries.pop()
            entries.append(Cycle(first, 2))  # type: ignore[arg-type]
            return


@dataclass
class Trace:
    """Records events as they happen; keeps the first and the last ``limit`` entries."""

    limit: int = 100
    head: list[Entry] = field(default_factory=list)
    tail: deque[Entry] = field(default_factory=deque)
    dropped: int = 0
    _events: list[str] = field(default_factory=list)
    _codes: list[str] = field(default_factory=list)
    _lost: int = 0  # events past _MAX_EVENTS in the current window
    _last: Entry | None = None  # the window the last step closed (or merged into)
    _last_events: list[str] = field(default_factory=list)  # and its moves

    def event(self, label: str) -> None:
        events = self._events
        if label == "forward" and events and events[-1] == "forward":
            return  # several model calls in a row (a GAN, an eval pass) read as one
        if len(events) < _MAX_EVENTS:
            events.append(label)
        else:
            self._lost += 1

    def code(self, code: str) -> None:
        if code not in self._codes:
            self._codes.append(code)

    def _window(self, optimizer: int | None, step: int) -> Window:
        moves = tokens(self._events)
        if self._lost:
            moves.append(Token((f"... {self._lost} more",)))
        window = Window(optimizer, step, step, moves, tuple(self._codes))
        self._events.clear()
        self._codes.clear()
        self._lost = 0
        return window

    def close(self, optimizer: int | None, step: int) -> None:
        """End the current window with step ``step`` of optimizer ``optimizer``."""
        end = self.tail if self.tail else self.head
        last = end[-1] if end else None
        if (
            last is self._last  # the very moves of the last window: no need to read them again
            and isinstance(last, Window)
            and last.optimizer == optimizer
            and last.last_step + 1 == step
            and self._events == self._last_events
            and tuple(self._codes) == last.codes
            and not self._lost
        ):
            last.last_step = step
            last.count += 1
            self._events.clear()
            self._codes.clear()
            return
        self._last_events = list(self._events)
        window = self._window(optimizer, step)
        if (
            isinstance(last, Window)
            and last.key() == window.key()
            and last.last_step + 1 == window.first_step
        ):
            last.absorb(window)
            self._last = last
            return
        _fold(end)  # the entries before this window are complete
        self._last = window
        if len(self.head) < self.limit and not self.tail:
            self.head.append(window)
            return
        self.tail.append(window)
        if len(self.tail) > self.limit + 2 * _MAX_PERIOD:  # room to fold before dropping
            self.dropped += self.tail.popleft().steps()

    def entries(self) -> list[Entry]:
        """Every entry kept, the last ones folded as if no step came after them, with the events
        since the last step as a final open window."""
        if self.tail:
            head, tail = list(self.head), copy.deepcopy(self.tail)
            _fold(tail)
        else:
            head, tail = copy.deepcopy(self.head), deque()
            _fold(head)
        out: list[Entry] = [*head, *tail]
        if self._events or self._codes:
            out.append(Window(None, -1, -1, tokens(self._events), tuple(self._codes)))
        return out

    def windows(self) -> list[Window]:
        """The kept windows, cycles unrolled once."""
        return [w for e in self.entries() for w in (e.windows if isinstance(e, Cycle) else [e])]


def render_text(
    trace: Trace, findings: list[Finding], counts: list[int], header: str, multi: bool
) -> str:
    """The report as text: a header, the folded per-step trace, then the findings."""
    lines = [header, "", "trace (events up to and including each optimizer step):"]
    shown = trace.entries()
    for index, entry in enumerate(shown):
        if index == len(trace.head) and trace.dropped:
            lines.append(f"  ... {trace.dropped} steps not kept ...")
        if isinstance(entry, Cycle):
            spans = ", ".join(_steps_label(w, multi) for w in entry.windows)
            lines.append(f"  {entry.repeats} times ({spans}):")
            lines.extend("    " + _window_line(w, multi, in_cycle=True) for w in entry.windows)
        else:
            lines.append("  " + _window_line(entry, multi))
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
            "trace": [e.to_dict() for e in trace.entries()],
            "dropped_steps": trace.dropped,
            "findings": [
                {**f.to_dict(), "count": n} for f, n in zip(findings, counts, strict=True)
            ],
        },
        indent=2,
    )


def _steps_label(window: Window, multi: bool) -> str:
    opt = f"[{window.optimizer}]" if multi and window.optimizer is not None else ""
    if window.first_step == window.last_step:
        return f"step{opt} {window.first_step}"
    return f"steps{opt} {window.first_step}-{window.last_step}"


def _window_line(window: Window, multi: bool, in_cycle: bool = False) -> str:
    if window.first_step < 0:
        label = "(since the last step)"
    elif in_cycle:
        opt = f"[{window.optimizer}]" if multi and window.optimizer is not None else ""
        label = f"step{opt}" if window.count == 1 else f"steps{opt} (x{window.count} each)"
    else:
        label = _steps_label(window, multi)
        if window.count > 1:
            label += f" (x{window.count})"
    events = " ".join(window.events) or "-"
    codes = f"   <- {', '.join(window.codes)}" if window.codes else ""
    return f"{label:<28} {events}{codes}"
