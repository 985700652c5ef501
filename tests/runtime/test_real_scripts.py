"""Shapes of public training scripts on which the watch was once wrong (issue 9), each on a tiny
real model that trains: correct code stays silent, the bug is found where it is."""

import os
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn.functional import mse_loss  # noqa: E402

import loopcheck  # noqa: E402

STEPS = 30


def line_of(text: str, occurrence: int = 0) -> int:
    """The line of this file that holds ``text`` (its ``occurrence``-th one)."""
    lines = Path(__file__).read_text().splitlines()
    found = [i for i, line in enumerate(lines, 1) if text in line]
    return found[occurrence]


# -- a GradScaler built with enabled=False returns the loss unscaled ------------------------------


@pytest.mark.parametrize("style", ["unscale-and-clip", "clip-only", "plain-step"])
def test_a_disabled_grad_scaler_scales_nothing(style, make_net, data):
    """``GradScaler(enabled=use_amp)`` with use_amp False (every bf16 or fp32 run): the loss it
    returns is the loss itself, so a divided accumulated loss is not LC201, and clipping
    without unscale_ or a plain opt.step() is not LC301/LC302."""
    x, y = data
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    losses = []
    with loopcheck.watch(opt, net, scaler=scaler, mode="raise") as w:
        for _ in range(STEPS):
            opt.zero_grad()
            for xb, yb in zip(x.chunk(4), y.chunk(4), strict=True):
                scaler.scale(mse_loss(net(xb), yb) / 4).backward()
            if style == "unscale-and-clip":
                scaler.unscale_(opt)
            if style == "plain-step":
                opt.step()
            else:
                nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                scaler.step(opt)
                scaler.update()
            losses.append(mse_loss(net(x), y).item())
    assert w.findings == []
    assert losses[-1] < 0.5 * losses[0]


# -- accelerator.backward divides by the accelerator's own accumulation steps --------------------

# Accelerate is not a dependency: this module does what `Accelerator.backward` does (outside
# DeepSpeed), and it is loaded from a directory the watch treats as installed libraries.
FAKE_ACCELERATE = """
class Accelerator:
    def __init__(self, gradient_accumulation_steps=1):
        self.gradient_accumulation_steps = gradient_accumulation_steps

    def backward(self, loss, **kwargs):
        loss = loss / self.gradient_accumulation_steps
        loss.backward(**kwargs)
"""


@pytest.fixture
def accelerate(tmp_path, monkeypatch):
    from loopcheck.runtime import sites

    (tmp_path / "fake_accelerate.py").write_text(textwrap.dedent(FAKE_ACCELERATE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sites, "INSTALLED", (str(tmp_path) + os.sep,))
    import fake_accelerate

    return fake_accelerate


@pytest.mark.parametrize(
    ("steps", "divide", "bug"), [(1, False, True), (1, True, False), (4, False, False)]
)
def test_accelerator_backward_accumulated_by_hand(accelerate, steps, divide, bug, make_net, data):
    """Accumulating by hand through ``accelerator.backward`` with the accelerator's own
    accumulation steps left at 1: its division by 1 divides nothing (LC201)."""
    x, y = data
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    accelerator = accelerate.Accelerator(gradient_accumulation_steps=steps)
    with loopcheck.watch(opt, net, mode="record") as w:
        for _ in range(3):
            opt.zero_grad()
            for xb, yb in zip(x.chunk(4), y.chunk(4), strict=True):
                loss = mse_loss(net(xb), yb)
                accelerator.backward(loss / 4 if divide else loss)  # the accumulated backward
            opt.step()
    if not bug:
        assert w.findings == []
        return
    (finding,) = w.findings
    assert finding.code == "LC201"
    assert (finding.file, finding.line) == (__file__, line_of("# the accumulated backward"))


# -- WGAN-GP: the critic every iteration, the generator every n-th, cleared every iteration ------


def gradient_penalty(critic, real, fake):
    alpha = torch.rand(real.size(0), 1)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grads,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    return ((grads.norm(2, dim=1) - 1) ** 2).mean()


@pytest.mark.parametrize("bug", [False, True])
def test_wgan_gp_with_n_critic(bug, make_gan, data):
    """As in PyTorch-GAN's wgan_gp.py: the critic's loss reaches the generator through fake
    samples that are not detached, and the generator is cleared every iteration though it
    steps every n_critic-th: its cleared gradients were never meant for it (no LC108). A clear
    inside a real accumulation loop still is LC108."""
    real, _ = data
    gen, critic = make_gan()
    opt_g = torch.optim.Adam(gen.parameters(), lr=1e-3, betas=(0.5, 0.9))
    opt_c = torch.optim.Adam(critic.parameters(), lr=1e-3, betas=(0.5, 0.9))
    with loopcheck.watch([opt_c, opt_g], [gen, critic], mode="record") as w:
        for i in range(STEPS):
            opt_c.zero_grad()
            fake = gen(torch.randn(64, 4))
            c_loss = critic(fake).mean() - critic(real).mean()
            c_loss = c_loss + 10 * gradient_penalty(critic, real, fake)
            c_loss.backward()
            opt_c.step()
            opt_g.zero_grad()
            if i % 5 == 0:
                for _half in range(2):  # the generator's loss in two halves
                    if bug:
                        opt_g.zero_grad()  # cleared between the halves
                    g_loss = -critic(gen(torch.randn(32, 4))).mean() / 2
                    g_loss.backward()
                opt_g.step()
    if not bug:
        assert w.findings == [], w.report()
        return
    (finding,) = w.findings
    assert (finding.code, finding.optimizer) == ("LC108", 1)
    assert finding.line == line_of("# cleared between the halves")


# -- a clear made by hand is reported at its own line, under its own name -------------------------


class LightningLikeOptimizer:
    """What Lightning's ``LightningOptimizer`` does to the optimizer it wraps: a new object that
    shares the optimizer's attributes (its parameter groups, its state) and whose class derives
    from the optimizer's, so that ``zero_grad`` runs with the wrapper as ``self``."""

    def __init__(self, optimizer):
        self.__dict__ = {k: v for k, v in optimizer.__dict__.items() if k != "step"}
        self._optimizer = optimizer
        self.__class__ = type(
            "Lightning" + type(optimizer).__name__, (type(self), type(optimizer)), {}
        )

    def step(self, closure=None):
        return self._optimizer.step(closure)


def clear_model(net, opt):
    net.zero_grad()  # clear: model


def clear_by_hand(net, opt):
    for p in net.parameters():
        p.grad = None  # clear: by hand


def clear_wrapped(net, opt):
    opt.zero_grad()  # clear: wrapped optimizer


@pytest.mark.parametrize(
    ("clear", "label"),
    [(clear_model, "model.zero"), (clear_by_hand, "p.grad=None"), (clear_wrapped, "zero")],
    ids=["model", "by-hand", "wrapped"],
)
@pytest.mark.parametrize("bug", [False, True])
def test_clears_are_seen_where_they_are_made(clear, label, bug, make_net, data):
    """Between backward and step each is LC102 at its own line; before the forward each is a
    correct clear. The trace names it."""
    x, y = data
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    user_opt = LightningLikeOptimizer(opt) if clear is clear_wrapped else opt
    losses = []
    with loopcheck.watch(opt, mode="record") as w:  # no model given
        for _ in range(STEPS):
            if not bug:
                clear(net, user_opt)
            loss = mse_loss(net(x), y)
            loss.backward()
            if bug:
                clear(net, user_opt)
            user_opt.step()
            losses.append(loss.item())
    trace = w.report().split("findings")[0]
    moves = f"{label} forward backward step" if not bug else f"forward backward {label} step"
    if clear is clear_by_hand and not bug:
        moves = "forward p.grad=None backward step"  # known to be a clear at the next move
    assert moves in trace
    if not bug:
        assert w.findings == [], w.report()
        assert losses[-1] < 0.5 * losses[0]
        return
    (finding,) = w.findings
    assert finding.code == "LC102"
    assert finding.line == line_of(f"# clear: {clear.__name__.split('_', 1)[1].replace('_', ' ')}")


# -- the report folds multi-optimizer steps and LBFGS closure evaluations ------------------------


def trace_lines(w) -> list[str]:
    text = w.report().split("trace (events up to and including each optimizer step):\n")[1]
    return text.split("\n\n")[0].splitlines()


def test_the_report_folds_a_gan_and_lbfgs(make_net, make_gan, data):
    x, y = data
    gen, disc = make_gan()
    opt_g = torch.optim.Adam(gen.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-3)
    bce = nn.BCEWithLogitsLoss()
    with loopcheck.watch([opt_d, opt_g], [gen, disc], mode="raise") as gan:
        for i in range(60):
            opt_d.zero_grad()
            fake = gen(torch.randn(64, 4))
            (
                bce(disc(x), torch.ones(64, 1)) + bce(disc(fake.detach()), torch.zeros(64, 1))
            ).backward()
            opt_d.step()
            if i % 3 == 2:
                opt_g.zero_grad()
                bce(disc(fake), torch.ones(64, 1)).backward()
                opt_g.step()
    lines = trace_lines(gan)
    assert lines[0].strip() == "20 times (steps[0] 0-59, steps[1] 0-19):", lines
    assert len(lines) == 3

    net = make_net()
    opt = torch.optim.LBFGS(net.parameters(), lr=0.5, max_iter=4)

    def closure():
        opt.zero_grad()
        loss = mse_loss(net(x), y)
        loss.backward()
        return loss

    with loopcheck.watch(opt, net, mode="raise") as lbfgs:
        for _ in range(10):
            opt.step(closure)
    (line,) = trace_lines(lbfgs)
    assert line.strip().startswith("steps 0-9 (x10)")
    assert "(zero forward backward params-edited) x" in line  # LBFGS moves them
