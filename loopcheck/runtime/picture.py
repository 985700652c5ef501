"""The report as a picture: one self-contained HTML page, inline SVG, no script, no network.

Pure Python. A lane per optimizer shows each step's moves in order (zero, forward, backward
x k, unscale, clip, step, scheduler), folded as in the text report (``steps 0-99 x100``, cycles
of several optimizers); findings are marked on the step where they happened, with their
message as the mark's tooltip and a link to the list below. A chart per optimizer shows the
gradient norm that clipping returned and what it left (already downsampled by
:mod:`loopcheck.runtime.norms`). The page's size depends on the folded trace, not on the
number of steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from loopcheck.runtime.findings import Finding
from loopcheck.runtime.norms import Norms, Series
from loopcheck.runtime.trace import Cycle, Token, Trace, Window

GLYPH = 24  # width of one move's box, in pixels
LANE = 58  # height of a lane
LEFT = 150  # room for the lanes' names
TOP = 34  # room above the first lane for cycle labels
MAX_TOKENS = 24  # moves drawn per window; the rest is summarised

# move (without its [optimizer] suffix) -> (short label, colour)
MOVES = {
    "zero": ("Z", "#9e9e9e"),
    "model.zero": ("MZ", "#9e9e9e"),
    "p.grad=None": ("Z*", "#9e9e9e"),
    "zero(by hand)": ("Z?", "#bdbdbd"),
    "forward": ("F", "#4e79a7"),
    "backward": ("B", "#8e6fbf"),
    "unscale": ("U", "#59a89c"),
    "clip": ("C", "#f28e2b"),
    "step": ("S", "#3f9b4a"),
    "scaler.step": ("S", "#3f9b4a"),
    "scaler.step(skipped)": ("S-", "#a5d6a7"),
    "scaler.update": ("SU", "#8cd17d"),
    "sched": ("LR", "#e2b33b"),
}
OTHER = ("?", "#d7d7d7")

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
.scroll { overflow-x: auto; border: 1px solid #ddd; padding: 4px; }
.summary { color: #555; }
.warning { color: #b00020; font-weight: bold; }
.findings li { margin: 0.4em 0; }
.code { font-weight: bold; color: #b00020; }
.legend span { display: inline-block; margin-right: 1em; }
.legend i { display: inline-block; width: 12px; height: 12px; margin-right: 4px;
  vertical-align: middle; }
svg text { font: 11px system-ui, sans-serif; }
"""


def _move_style(label: str) -> tuple[str, str, str]:
    """(short label, colour, full name) of a move label such as ``backward[0,1]``."""
    base = label.split("[", 1)[0]
    short, colour = MOVES.get(base, OTHER)
    return short, colour, label


def _token_width(token: Token) -> int:
    width = len(token.moves) * GLYPH
    return width + (22 if token.high > 1 else 0)


def _window_width(window: Window) -> int:
    shown = window.tokens[:MAX_TOKENS]
    width = sum(_token_width(t) for t in shown) + (GLYPH if len(window.tokens) > MAX_TOKENS else 0)
    return max(width, GLYPH) + 16


def _steps_text(window: Window) -> str:
    if window.first_step < 0:
        return "since the last step"
    if window.first_step == window.last_step:
        return f"step {window.first_step}"
    return f"steps {window.first_step}-{window.last_step}"


class _Page:
    def __init__(self, findings: Sequence[Finding], counts: Sequence[int], lanes: int) -> None:
        self.findings = findings
        self.counts = counts
        self.lanes = lanes
        self.svg: list[str] = []

    def lane_y(self, optimizer: int | None) -> int:
        lane = self.lanes - 1 if optimizer is None else optimizer  # open window: last lane
        return TOP + lane * LANE

    def window(self, window: Window, x: int, count_label: str) -> int:
        """Draw one window at ``x``; returns its width."""
        width = _window_width(window)
        y = self.lane_y(window.optimizer)
        out = self.svg
        out.append(
            f'<g class="window" data-optimizer="{window.optimizer}" '
            f'data-first-step="{window.first_step}" data-last-step="{window.last_step}">'
        )
        out.append(
            f'<rect x="{x + 2}" y="{y + 14}" width="{width - 4}" height="30" rx="4" '
            f'fill="#f6f6f6" stroke="#ccc"/>'
        )
        label = _steps_text(window) + count_label
        out.append(f'<text x="{x + 4}" y="{y + 10}">{escape(label)}</text>')
        cx = x + 8
        for token in window.tokens[:MAX_TOKENS]:
            for move in token.moves:
                short, colour, name = _move_style(move)
                times = "" if token.high == 1 else f" (x{token.low}-{token.high})"
                out.append(
                    f'<g class="move" data-move="{escape(name)}"><title>{escape(name + times)}'
                    f'</title><rect x="{cx}" y="{y + 19}" width="{GLYPH - 3}" height="20" '
                    f'rx="3" fill="{colour}"/><text x="{cx + 3}" y="{y + 33}" fill="#fff">'
                    f"{escape(short)}</text></g>"
                )
                cx += GLYPH
            if token.high > 1:  # a repeated group: underlined, its count after it
                start = cx - len(token.moves) * GLYPH
                times = str(token.low) if token.low == token.high else f"{token.low}-{token.high}"
                out.append(
                    f'<line x1="{start}" x2="{cx - 3}" y1="{y + 42}" y2="{y + 42}" '
                    'stroke="#555"/>'
                    f'<text class="repeat" x="{cx}" y="{y + 33}">x{times}</text>'
                )
                cx += 22
        if len(window.tokens) > MAX_TOKENS:
            out.append(f'<text x="{cx}" y="{y + 33}">...</text>')
        if window.codes:
            self.mark(window, x + width - 10, y)
        out.append("</g>")
        return width

    def mark(self, window: Window, x: int, y: int) -> None:
        """A finding's mark on the step where it happened: its messages as the tooltip, a
        link to the list."""
        found = [
            (i, f)
            for i, f in enumerate(self.findings)
            if f.code in window.codes and f.optimizer in (window.optimizer, None)
        ]
        within = [
            (i, f) for i, f in found if window.first_step <= f.step <= max(window.last_step, 0)
        ]
        found = within or found
        target = f"#finding-{found[0][0]}" if found else "#findings"
        tooltip = "\n".join(str(f) for _, f in found) or ", ".join(window.codes)
        self.svg.append(
            f'<a href="{target}" class="finding-mark" data-codes="{" ".join(window.codes)}">'
            f"<title>{escape(tooltip)}</title>"
            f'<circle cx="{x}" cy="{y + 14}" r="7" fill="#d62728"/>'
            f'<text x="{x - 20}" y="{y + 56}" fill="#b00020">{escape(" ".join(window.codes))}'
            f"</text></a>"
        )


def _timeline(trace: Trace, names: Sequence[str], page: _Page) -> str:
    out = page.svg
    x = LEFT
    for index, entry in enumerate(trace.entries()):
        if index == len(trace.head) and trace.dropped:
            out.append(
                f'<text class="dropped" x="{x + 4}" y="{TOP + 30}">... {trace.dropped} steps '
                "not kept ...</text>"
            )
            x += 150
        if isinstance(entry, Cycle):
            start = x
            for window in entry.windows:
                each = f" (x{window.count} each)" if window.count > 1 else ""
                x += page.window(window, x, each)
            height = page.lanes * LANE + 6
            out.append(
                f'<g class="cycle" data-repeats="{entry.repeats}"><rect x="{start}" y="{TOP - 20}"'
                f' width="{x - start}" height="{height}" fill="none" stroke="#777" '
                f'stroke-dasharray="4 3"/><text x="{start + 4}" y="{TOP - 8}">'
                f"{entry.repeats} times</text></g>"
            )
            x += 6
        else:
            count = f" (x{entry.count})" if entry.count > 1 else ""
            x += page.window(entry, x, count)
    height = TOP + page.lanes * LANE + 10
    labels = [
        f'<text x="4" y="{page.lane_y(i) + 33}" font-weight="bold">{escape(name)}</text>'
        for i, name in enumerate(names)
    ]
    lines = [
        f'<line x1="0" x2="{x}" y1="{page.lane_y(i) + LANE - 6}" y2="{page.lane_y(i) + LANE - 6}"'
        ' stroke="#eee"/>'
        for i in range(page.lanes)
    ]
    return (
        f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="{x + 20}" '
        f'height="{height}" role="img" aria-label="steps per optimizer">'
        + "".join(lines + labels + out)
        + "</svg>"
    )


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def _chart(index: int, name: str, series: Series) -> str:
    """The norm clipping returned (before) and left (after) over the steps, and max_norm."""
    buckets = series.buckets
    width, height, pad = 720, 180, 36
    values = _finite([b.high for b in buckets] + [b.max_norm for b in buckets])
    top = max(values, default=1.0) * 1.05 or 1.0
    first, last = buckets[0].first, max(buckets[-1].last, buckets[0].first + 1)

    def px(step: float) -> float:
        return pad + (step - first) / (last - first) * (width - 2 * pad)

    def py(value: float) -> float:
        value = value if math.isfinite(value) else top
        return height - pad + -(min(value, top) / top) * (height - 2 * pad)

    def line(points: list[tuple[float, float]], colour: str, extra: str = "") -> str:
        coords = " ".join(f"{px(s):.1f},{py(v):.1f}" for s, v in points)
        return f'<polyline points="{coords}" fill="none" stroke="{colour}" {extra}/>'

    middle = [((b.first + b.last) / 2, b.value) for b in buckets]
    band = [((b.first + b.last) / 2, b.high) for b in buckets] + [
        ((b.first + b.last) / 2, b.low) for b in reversed(buckets)
    ]
    band_points = " ".join(f"{px(s):.1f},{py(v):.1f}" for s, v in band)
    parts = [
        f'<svg class="norm-chart" data-optimizer="{index}" data-points="{len(buckets)}" '
        f'data-steps-per-point="{series.width}" xmlns="http://www.w3.org/2000/svg" '
        f'width="{width}" height="{height}" role="img" aria-label="gradient norm of {name}">',
        f'<rect x="{pad}" y="{pad}" width="{width - 2 * pad}" height="{height - 2 * pad}" '
        'fill="#fafafa" stroke="#ddd"/>',
        f'<polygon class="band" points="{band_points}" fill="#4e79a7" fill-opacity="0.15"/>',
        line(middle, "#4e79a7", 'class="before" stroke-width="1.5"'),
        line(
            [((b.first + b.last) / 2, b.after) for b in buckets],
            "#f28e2b",
            'class="after" stroke-width="1.5"',
        ),
        line(
            [((b.first + b.last) / 2, b.max_norm) for b in buckets],
            "#d62728",
            'class="max-norm" stroke-dasharray="5 4"',
        ),
        f'<text x="{pad}" y="{height - 10}">step {first}</text>',
        f'<text x="{width - pad - 60}" y="{height - 10}">step {buckets[-1].last}</text>',
        f'<text x="2" y="{pad + 4}">{top:.3g}</text>',
        f'<text x="2" y="{height - pad}">0</text>',
        f'<text x="{pad + 4}" y="{pad - 8}">{escape(name)}</text>',
        "</svg>",
    ]
    return "".join(parts)


def render_html(
    trace: Trace,
    findings: Sequence[Finding],
    counts: Sequence[int],
    norms: Norms,
    summary: dict,
) -> str:
    """The report as one self-contained HTML page."""
    optimizers = [f"{i}: {n}" for i, n in enumerate(summary.get("optimizers", []))]
    names = [f"optimizer {o}" for o in optimizers]
    has_open = any(w.first_step < 0 for w in trace.windows())
    if not names or has_open:
        names.append("since the last step" if names else "no optimizer")
    page = _Page(findings, counts, len(names))
    steps = ", ".join(map(str, summary.get("steps", []))) or "0"
    head = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>loopcheck watch report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>loopcheck watch report</h1>",
        f'<p class="summary">optimizers: {escape(", ".join(optimizers) or "none")}; '
        f"steps: {steps}; "
        f"{len(findings)} finding(s); mode: {escape(str(summary.get('mode', '')))}</p>",
    ]
    if not summary.get("checked", True):
        head.append('<p class="warning">Nothing was checked: no optimizer stepped.</p>')
    if summary.get("stopped"):
        head.append(
            f'<p class="warning">Stopped checking after an internal error: '
            f"{escape(str(summary['stopped']))}</p>"
        )
    legend = "".join(
        f'<span><i style="background:{colour}"></i>{escape(short)} {escape(name)}</span>'
        for name, (short, colour) in MOVES.items()
        if name in ("zero", "forward", "backward", "unscale", "clip", "step", "sched")
    )
    body = [
        "<h2>Steps</h2>",
        '<p class="summary">Each block is an optimizer step and the moves since the previous '
        "one; repeated steps are folded, a red mark is a finding (hover for its message).</p>",
        f'<p class="legend">{legend}</p>',
        f'<div class="scroll">{_timeline(trace, names, page)}</div>',
    ]
    if norms.series:
        body.append("<h2>Gradient norm at clipping</h2>")
        body.append(
            '<p class="summary">Blue: the norm clipping returned (its range when a point covers '
            "several steps); orange: what clipping left; red dashes: max_norm.</p>"
        )
        for index, series in sorted(norms.series.items()):
            if series.buckets:
                name = names[index] if index < len(names) else f"optimizer {index}"
                body.append(f'<div class="scroll">{_chart(index, name, series)}</div>')
    body.append('<h2 id="findings">Findings</h2>')
    if findings:
        body.append('<ol class="findings">')
        for i, (finding, count) in enumerate(zip(findings, counts, strict=True)):
            times = f" (x{count})" if count > 1 else ""
            where = f" at {escape(finding.where)}" if finding.where else ""
            opt = f", optimizer {finding.optimizer}" if finding.optimizer is not None else ""
            body.append(
                f'<li id="finding-{i}"><span class="code">{escape(finding.code)}</span> '
                f"{escape(finding.name)}{where} (step {finding.step}{opt}){times}: "
                f"{escape(finding.message)}</li>"
            )
        body.append("</ol>")
    else:
        body.append("<p>No findings.</p>")
    return "\n".join([*head, *body, "</body></html>"]) + "\n"
