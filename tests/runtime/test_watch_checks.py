"""Each runtime check on a tiny real model: it fires on the bug and stays silent on the correct
loop, which really trains."""

import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn.functional import mse_loss  # noqa: E402

import loopcheck  # noqa: E402

STEPS = 30


def codes(w) -> set[str]:
    return {f.code for f in w.findings}


def sgd(net, lr=0.05):
    return torch.optim.SGD(net.parameters(), lr=lr)


# Each loop trains `net` on `data` with the bug (bug=True) or without it, under a watch in
# record mode, and returns the watch and the loss of every step.


def loop_lc101(net, data, bug):
    x, y = data
    opt, losses = sgd(net, lr=0.01), []
    with loopcheck.watch(opt, net, mode="record") as w:
        for _ in range(STEPS):
            if not bug:
                opt.zero_grad()
            loss = mse_loss(net(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return w, losses


def loop_lc102(net, data, bug):
    x, y = data
    opt, losses = sgd(net), []
    with loopcheck.watch(opt, net, mode="record") as w:
        for _ in range(STEPS):
            opt.zero_grad()
            loss = mse_loss(net(x), y)
            loss.backward()
            if bug:
                opt.zero_grad()
            opt.step()
            losses.append(loss.item())
    return w, losses


def loop_lc103(net, data, bug):
    x, y = data
    opt, losses = sgd(net), []
    with loopcheck.watch(opt, net, mode="record") as w:
        for _ in range(STEPS):
            opt.zero_grad()
            loss = mse_loss(net(x), y)
            if bug:
                opt.step()
                loss.backward()
            else:
                loss.backward()
                opt.step()
            losses.append(loss.item())
    return w, losses


def loop_lc104(net, data, bug):
    x, y = data
    opt, losses = sgd(net), []
    with loopcheck.watch(opt, net, mode="record") as w:
        for _ in range(STEPS):
            opt.zero_grad()
            loss = mse_loss(net(x), y)
            if not bug:
                loss.backward()
            opt.step()
            losses.append(loss.item())
    return w, losses


def loop_lc105(net, data, bug):
    x, y = data
    opt, losses = sgd(net), []
    with loopcheck.watch(opt, net, mode="record") as w:
        for _ in range(STEPS):
            opt.zero_grad()
            loss = mse_loss(net(x), y)
            loss.backward()
            if not bug:
                opt.step()
            losses.append(loss.item())
    return w, losses


def loop_lc106(net, data, bug):
    x, y = data
    opt, losses = sgd(net), []
    with loopcheck.watch(opt, net, mode="record") as w:
        for _ in range(STEPS):
            opt.zero_grad()
            loss = mse_loss(net(x), y)
            loss.backward()
            if not bug:
                nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            if bug:
                nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            losses.append(loss.item())
    return w, losses


def loop_lc107(net, data, bug):
    x, y = data
    opt, losses = sgd(net), []
    with loopcheck.watch(opt, net, mode="record") as w:
        for _ in range(STEPS):
            opt.zero_grad()
            loss = mse_loss(net(x), y)
            if bug:
                nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            loss.backward()
            if not bug:
                nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
    return w, losses


def loop_lc108(net, data, bug):
    x, y = data
    opt, losses = sgd(net), []
    with loopcheck.watch(opt, net, mode="record") as w:
        for _ in range(STEPS):
            if not bug:
                opt.zero_grad()
            for xb, yb in zip(x.chunk(4), y.chunk(4), strict=True):
                if bug:
                    opt.zero_grad()
                loss = mse_loss(net(xb), yb) / 4
                loss.backward()
            opt.step()
            losses.append(mse_loss(net(x), y).item())
    return w, losses


def loop_lc201(net, data, bug):
    x, y = data
    opt, losses = sgd(net, lr=0.02), []
    with loopcheck.watch(opt, net, mode="record") as w:
        for _ in range(STEPS):
            opt.zero_grad()
            for xb, yb in zip(x.chunk(4), y.chunk(4), strict=True):
                loss = mse_loss(net(xb), yb)
                if not bug:
                    loss = loss / 4
                loss.backward()
            opt.step()
            losses.append(mse_loss(net(x), y).item())
    return w, losses


def _amp_loop(net, data, bug, fault):
    """An AMP loop (bf16 autocast, a CPU GradScaler); ``fault`` names the AMP bug."""
    x, y = data
    opt, losses = sgd(net), []
    scaler = torch.amp.GradScaler("cpu")
    with loopcheck.watch(opt, net, scaler=scaler, mode="record") as w:
        for _ in range(STEPS):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = mse_loss(net(x).float(), y)
            scaler.scale(loss).backward()
            if bug and fault == "bypass":
                opt.step()
                scaler.update(2.0**16)  # keep the scaler going as if it had stepped
            else:
                if not (bug and fault == "no-unscale"):
                    scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                scaler.step(opt)
                scaler.update()
            losses.append(loss.item())
    return w, losses


def loop_lc301(net, data, bug):
    return _amp_loop(net, data, bug, "no-unscale")


def loop_lc302(net, data, bug):
    x, y = data
    opt, losses = sgd(net), []
    # a scale of 1 keeps the bypassed steps sane, so that only the watch can tell
    scaler = torch.amp.GradScaler("cpu", init_scale=1.0, growth_interval=10**6)
    with loopcheck.watch(opt, net, scaler=scaler, mode="record") as w:
        for _ in range(STEPS):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = mse_loss(net(x).float(), y)
            scaler.scale(loss).backward()
            if bug:
                opt.step()
            else:
                scaler.step(opt)
                scaler.update()
            losses.append(loss.item())
    return w, losses


def loop_lc401(net, data, bug):
    x, y = data
    opt, losses = sgd(net), []
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)
    with loopcheck.watch(opt, net, scheduler=sched, mode="record") as w:
        for _ in range(STEPS):
            opt.zero_grad()
            loss = mse_loss(net(x), y)
            loss.backward()
            if bug:
                sched.step()
            opt.step()
            if not bug:
                sched.step()
            losses.append(loss.item())
    return w, losses


def loop_lc601(net, data, bug):
    """Two heads take turns; `net.zero_grad()` clears only the net, not the extra head, whose
    old gradient is applied again on every turn it sits out."""
    x, y = data
    extra = nn.Linear(16, 1)
    opt = torch.optim.SGD([*net.parameters(), *extra.parameters()], lr=0.05)
    losses = []
    with loopcheck.watch(opt, [net, extra], mode="record") as w:
        for i in range(STEPS):
            if bug:
                net.zero_grad()
            else:
                opt.zero_grad()
            head = net.head if i % 2 else extra
            loss = mse_loss(head(net.body(x)), y)
            loss.backward()
            opt.step()
            losses.append(mse_loss(net(x), y).item())
    return w, losses


def loop_lc602(net, data, bug):
    """The optimizer is built from the body only: the head learns nothing."""
    x, y = data
    params = net.body.parameters() if bug else net.parameters()
    opt, losses = torch.optim.SGD(params, lr=0.05), []
    with loopcheck.watch(opt, net, mode="record") as w:
        for _ in range(STEPS):
            opt.zero_grad()
            loss = mse_loss(net(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return w, losses


class SkippingSGD(torch.optim.Optimizer):
    """A custom SGD whose step() forgets the last parameter group when ``bug`` is set."""

    def __init__(self, groups, lr, bug):
        super().__init__(groups, {"lr": lr})
        self.bug = bug

    @torch.no_grad()
    def step(self, closure=None):
        groups = self.param_groups[:-1] if self.bug else self.param_groups
        for group in groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"])


def loop_lc603(net, data, bug):
    x, y = data
    groups = [{"params": net.body.parameters()}, {"params": net.head.parameters()}]
    opt, losses = SkippingSGD(groups, lr=0.05, bug=bug), []
    with loopcheck.watch(opt, net, mode="record") as w:
        for _ in range(STEPS):
            opt.zero_grad()
            loss = mse_loss(net(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return w, losses


def loop_lc604(net, data, bug):
    """A learning rate too large: the loss blows up to Inf, then NaN."""
    x, y = data
    opt, losses = sgd(net, lr=5.0 if bug else 0.05), []
    with loopcheck.watch(opt, net, mode="record") as w:
        for _ in range(STEPS):
            opt.zero_grad()
            loss = mse_loss(net(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return w, losses


def loop_lc605(net, data, bug):
    """Clipping the body's gradients only, while the optimizer steps the whole net."""
    x, y = data
    opt, losses = sgd(net, lr=0.2), []
    with loopcheck.watch(opt, net, mode="record") as w:
        for _ in range(STEPS):
            opt.zero_grad()
            loss = mse_loss(net(x), y)
            loss.backward()
            nn.utils.clip_grad_norm_(net.body.parameters() if bug else net.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
    return w, losses


LOOPS = {
    "LC101": loop_lc101,
    "LC102": loop_lc102,
    "LC103": loop_lc103,
    "LC104": loop_lc104,
    "LC105": loop_lc105,
    "LC106": loop_lc106,
    "LC107": loop_lc107,
    "LC108": loop_lc108,
    "LC201": loop_lc201,
    "LC301": loop_lc301,
    "LC302": loop_lc302,
    "LC401": loop_lc401,
    "LC601": loop_lc601,
    "LC602": loop_lc602,
    "LC603": loop_lc603,
    "LC604": loop_lc604,
    "LC605": loop_lc605,
}


@pytest.fixture(autouse=True)
def _quiet_torch():
    # torch's own warning about scheduler.step() before optimizer.step() (the LC401 bug)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        yield


@pytest.mark.parametrize("code", LOOPS)
def test_fires_on_the_bug(code, make_net, data):
    w, _ = LOOPS[code](make_net(), data, bug=True)
    assert codes(w) == {code}, w.report()


@pytest.mark.parametrize("code", LOOPS)
def test_silent_on_the_correct_loop_which_trains(code, make_net, data):
    w, losses = LOOPS[code](make_net(), data, bug=False)
    assert w.findings == [], w.report()
    assert losses[-1] < 0.5 * losses[0]


def test_finding_points_at_the_faulty_line_and_step(make_net, data):
    w, _ = loop_lc102(make_net(), data, bug=True)
    (finding,) = w.findings
    assert finding.step == 0
    assert finding.optimizer == 0
    assert finding.file == __file__
    source = Path(__file__).read_text().splitlines()[finding.line - 1]
    assert source.strip() == "opt.zero_grad()"
    assert source.startswith(" " * 16)  # the clear inside `if bug:`, not the first one
    assert w.counts[("LC102", finding.where, 0)] == STEPS


def test_double_unscale(make_net, data):
    x, y = data
    net = make_net()
    opt = sgd(net)
    scaler = torch.amp.GradScaler("cpu")
    with loopcheck.watch(opt, net, scaler=scaler, mode="record") as w:
        opt.zero_grad()
        scaler.scale(mse_loss(net(x), y)).backward()
        scaler.unscale_(opt)
        with pytest.raises(RuntimeError, match="unscale_"):  # torch refuses it too
            scaler.unscale_(opt)
    assert codes(w) == {"LC304"}


def test_stale_gradients_of_a_repeated_step(make_net, data):
    x, y = data
    net = make_net()
    opt = sgd(net)
    with loopcheck.watch(opt, net, mode="record") as w:
        for _ in range(5):
            opt.zero_grad()
            mse_loss(net(x), y).backward()
            opt.step()
            opt.step()
    assert codes(w) == {"LC601"}
    assert {f.step for f in w.findings} == {1}


def test_clipping_a_copy_of_the_model(make_net, data):
    """Clipping an EMA copy (no gradients, no optimizer) leaves the real gradients unclipped."""
    x, y = data
    net, ema = make_net(), make_net()
    opt = sgd(net)
    with loopcheck.watch(opt, net, mode="record") as w:
        for _ in range(3):
            opt.zero_grad()
            mse_loss(net(x), y).backward()
            nn.utils.clip_grad_norm_(ema.parameters(), 0.1)
            opt.step()
    assert codes(w) == {"LC605"}


def test_backward_after_clipping(make_net, data):
    """A second loss backpropagated after clipping adds unclipped gradients."""
    x, y = data
    net = make_net()
    opt = sgd(net)
    with loopcheck.watch(opt, net, mode="record") as w:
        for _ in range(3):
            opt.zero_grad()
            mse_loss(net(x), y).backward()
            nn.utils.clip_grad_norm_(net.parameters(), 0.01)
            net(x).pow(2).mean().backward()  # an auxiliary loss, after clipping
            opt.step()
    assert codes(w) == {"LC605"}


def test_non_finite_gradient_norm_from_clipping(make_net, data):
    x, y = data
    net = make_net()
    opt = sgd(net)
    with loopcheck.watch(opt, net, mode="record") as w:
        opt.zero_grad()
        loss = mse_loss(net(x), y)
        loss.backward()
        net.head.weight.grad[0, 0] = float("nan")  # as a bad custom backward would leave it
        nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
    (finding,) = w.findings
    assert finding.code == "LC604"
    assert "norm" in finding.message


@pytest.mark.parametrize("divided", [True, False])
def test_accumulation_of_scaled_losses(divided, make_net, data):
    """With AMP the loss given to backward is the scaler's product: look below it."""
    x, y = data
    net = make_net()
    opt = sgd(net)
    scaler = torch.amp.GradScaler("cpu")
    with loopcheck.watch(opt, net, scaler=scaler, mode="record") as w:
        for _ in range(3):
            opt.zero_grad()
            for xb, yb in zip(x.chunk(4), y.chunk(4), strict=True):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = mse_loss(net(xb).float(), yb)
                scaler.scale(loss / 4 if divided else loss).backward()
            scaler.step(opt)
            scaler.update()
    assert codes(w) == (set() if divided else {"LC201"})


def test_plateau_scheduler_and_a_list_of_schedulers(make_net, data):
    x, y = data
    net = make_net()
    opt = sgd(net)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
    decay = torch.optim.lr_scheduler.ExponentialLR(opt, 0.99)
    with loopcheck.watch(opt, net, scheduler=[plateau, decay], mode="record") as w:
        for _ in range(3):
            opt.zero_grad()
            loss = mse_loss(net(x), y)
            loss.backward()
            plateau.step(loss.item())  # before the optimizer: LC401
            opt.step()
            decay.step()
    assert codes(w) == {"LC401"}
    assert "plateau.step" in Path(__file__).read_text().splitlines()[w.findings[0].line - 1]


def test_clipping_norm_type_is_the_one_clipping_used(make_net, data):
    """LC605 combines norms of the clipping's own type (here the max norm), read from the call
    whatever name clip_grad_norm_ was imported under."""
    from torch.nn.utils import clip_grad_norm_

    x, y = data
    net = make_net()
    opt = sgd(net)
    with loopcheck.watch(opt, net, mode="record") as w:
        opt.zero_grad()
        mse_loss(net(x), y).backward()
        clip_grad_norm_(net.body.parameters(), 1e-3, norm_type=float("inf"))
        missed = max(p.grad.abs().max().item() for p in net.head.parameters())
        opt.step()
    (finding,) = w.findings
    assert finding.code == "LC605"
    assert f"norm {max(missed, 1e-3):.4g} > max_norm 0.001" in finding.message
