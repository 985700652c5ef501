"""``w.report("html")``: one self-contained page that draws the trace, read back with
html.parser as a browser would see it."""

import math
from html.parser import HTMLParser

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import loopcheck  # noqa: E402
from loopcheck.runtime.findings import make_finding  # noqa: E402
from loopcheck.runtime.norms import Norms  # noqa: E402
from loopcheck.runtime.picture import render_html  # noqa: E402
from loopcheck.runtime.trace import Token, Trace, Window  # noqa: E402


class Page(HTMLParser):
    """Every element with its attributes and the text inside it."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.elements: list[dict] = []
        self.open: list[dict] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        element = {"tag": tag, **dict(attrs), "text": ""}
        self.elements.append(element)
        if tag != "meta":
            self.open.append(element)

    def handle_startendtag(self, tag, attrs):  # <rect ... />: nothing inside
        self.elements.append({"tag": tag, **dict(attrs), "text": ""})

    def handle_endtag(self, tag):
        while self.open:
            if self.open.pop()["tag"] == tag:
                break

    def handle_data(self, data):
        for element in self.open:
            element["text"] += data

    def find(self, tag, **attrs):
        return [
            e
            for e in self.elements
            if e["tag"] == tag and all(e.get(k.replace("_", "-")) == v for k, v in attrs.items())
        ]


def assert_self_contained(page: Page) -> None:
    assert not page.find("script") and not page.find("link") and not page.find("img")
    for element in page.elements:
        for key, value in element.items():
            if key.startswith("on"):
                raise AssertionError(f"an event handler: {element}")
            if key in ("href", "src") and not value.startswith("#"):
                raise AssertionError(f"a resource outside the page: {element}")


def test_a_gan_run_drawn_lane_by_lane_with_its_finding_and_norms(make_gan, data):
    """A GAN whose critic steps 3 times per generator step, with clipping; at one step the
    critic's gradients are cleared before its step (LC102)."""
    x, _ = data
    gen, disc = make_gan()
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-3)
    opt_g = torch.optim.Adam(gen.parameters(), lr=1e-3)
    bce = nn.BCEWithLogitsLoss()
    with loopcheck.watch([opt_d, opt_g], [gen, disc], mode="record") as w:
        for i in range(60):
            opt_d.zero_grad()
            fake = gen(torch.randn(64, 4))
            (
                bce(disc(x), torch.ones(64, 1)) + bce(disc(fake.detach()), torch.zeros(64, 1))
            ).backward()
            if i == 40:
                opt_d.zero_grad()  # the bug
            nn.utils.clip_grad_norm_(disc.parameters(), 0.5)
            opt_d.step()
            if i % 3 == 2:
                opt_g.zero_grad()
                bce(disc(fake), torch.ones(64, 1)).backward()
                opt_g.step()
    html = w.report("html")
    page = Page(html)
    assert_self_contained(page)
    (timeline,) = page.find("svg", **{"class": "timeline"})
    assert "optimizer 0: Adam" in timeline["text"] and "optimizer 1: Adam" in timeline["text"]
    windows = page.find("g", **{"class": "window"})
    assert {w["data-optimizer"] for w in windows} == {"0", "1"}
    assert page.find("g", **{"class": "cycle"})  # the 3:1 rhythm is folded
    assert len(windows) < 20  # 80 steps, a few blocks
    moves = {m["data-move"] for m in page.find("g", **{"class": "move"})}
    assert {"zero[0]", "forward", "backward[0]", "clip[0]", "step[0]", "step[1]"} <= moves
    (mark,) = page.find("a", **{"class": "finding-mark"})
    assert mark["data-codes"] == "LC102"
    assert "LC102 zero-grad-after-backward" in mark["text"]  # the tooltip: the message
    (finding,) = w.findings
    (target,) = [e for e in page.elements if e.get("id") == mark["href"][1:]]
    assert target["tag"] == "li" and finding.message in target["text"]
    marked = [w for w in windows if "LC102" in w["text"]]
    assert [(m["data-first-step"], m["data-optimizer"]) for m in marked] == [("40", "0")]
    (chart,) = page.find("svg", **{"class": "norm-chart"})
    # 60 clippings, one of cleared gradients (the bug's step) that clipped nothing
    assert chart["data-optimizer"] == "0" and chart["data-points"] == "59"
    (before,) = [e for e in page.elements if e.get("class") == "before"]
    assert len(before["points"].split()) == 59


def test_a_million_steps_stay_a_small_page():
    """A synthetic trace of a million steps (folded as the watch folds them) and a million clip
    norms: the page stays small, the chart downsampled."""
    trace = Trace()
    moves = [Token(("zero", "forward")), Token(("backward",), 4, 4), Token(("clip", "step"))]
    trace.head.append(Window(0, 0, 499_999, moves, (), 500_000))
    trace.head.append(Window(0, 500_000, 500_000, moves, ("LC102",), 1))
    trace.head.append(Window(0, 500_001, 999_999, moves, (), 499_999))
    norms = Norms()
    for step in range(1_000_000):
        norms.add(0, step, 2.0 + math.sin(step / 5000.0), 2.5)
    finding = make_finding("LC102", 500_000, "", "train.py", 31, 0)
    summary = {"optimizers": ["AdamW"], "steps": [1_000_000], "mode": "warn", "checked": True}
    html = render_html(trace, [finding], [1], norms, summary)
    assert len(html.encode()) < 100_000
    page = Page(html)
    assert_self_contained(page)
    (chart,) = page.find("svg", **{"class": "norm-chart"})
    assert int(chart["data-points"]) <= 1024 and int(chart["data-steps-per-point"]) >= 1024
    labels = [e["text"] for e in page.find("text") if "steps" in e["text"]]
    assert "steps 0-499999 (x500000)" in labels
    assert page.find("a", **{"class": "finding-mark", "data-codes": "LC102"})


def test_nothing_checked_is_said_on_the_page():
    html = render_html(Trace(), [], [], Norms(), {"optimizers": [], "checked": False})
    assert "Nothing was checked: no optimizer stepped." in html
