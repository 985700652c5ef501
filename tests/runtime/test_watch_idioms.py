"""Correct training code seen in real projects: the watch must stay silent (DESIGN.md, "Idioms
that are correct and must stay silent"), and the model must still learn."""

import json

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn.functional import mse_loss  # noqa: E402

import loopcheck  # noqa: E402

STEPS = 30


def assert_silent_and_learning(w, losses):
    assert w.findings == [], w.report()
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("where", ["end", "between-forward-and-backward"])
def test_clear_elsewhere(where, make_net, data):
    x, y = data
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    losses = []
    with loopcheck.watch(opt, net, mode="raise") as w:
        for _ in range(STEPS):
            loss = mse_loss(net(x), y)
            if where != "end":
                opt.zero_grad()
            loss.backward()
            opt.step()
            if where == "end":
                opt.zero_grad()
            losses.append(loss.item())
    assert_silent_and_learning(w, losses)


@pytest.mark.parametrize("how", ["model", "none-by-hand", "zero-in-place", "zero-by-hand"])
def test_other_ways_to_clear(how, make_net, data):
    x, y = data
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    losses = []
    with loopcheck.watch(opt, net, mode="raise") as w:
        for _ in range(STEPS):
            if how == "model":
                net.zero_grad()
            elif how == "none-by-hand":
                for p in net.parameters():
                    p.grad = None
            elif how == "zero-in-place":
                opt.zero_grad(set_to_none=False)
            else:
                for p in net.parameters():
                    if p.grad is not None:
                        p.grad.detach_()
                        p.grad.zero_()
            loss = mse_loss(net(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert_silent_and_learning(w, losses)


def test_freezing_some_gradients_for_one_step(make_net, data):
    x, y = data
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    losses = []
    with loopcheck.watch(opt, net, mode="raise") as w:
        for i in range(STEPS):
            opt.zero_grad()
            loss = mse_loss(net(x), y)
            loss.backward()
            if i % 3 == 0:
                net.head.weight.grad = None
            opt.step()
            losses.append(loss.item())
    assert_silent_and_learning(w, losses)


@pytest.mark.parametrize("style", ["inner-loop", "flat-guard", "rescaled-by-hand"])
def test_gradient_accumulation(style, make_net, data):
    x, y = data
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    chunks = list(zip(x.chunk(4), y.chunk(4), strict=True))
    losses = []
    with loopcheck.watch(opt, net, mode="raise") as w:
        if style == "flat-guard":
            for i in range(STEPS * 4):
                xb, yb = chunks[i % 4]
                (mse_loss(net(xb), yb) / 4).backward()
                if (i + 1) % 4 == 0:
                    opt.step()
                    opt.zero_grad()
                    losses.append(mse_loss(net(x), y).item())
        else:
            for _ in range(STEPS):
                opt.zero_grad()
                for xb, yb in chunks:
                    loss = mse_loss(net(xb), yb)
                    if style == "inner-loop":
                        loss = loss / 4
                    loss.backward()
                if style == "rescaled-by-hand":
                    for p in net.parameters():
                        p.grad.mul_(1 / 4)
                opt.step()
                losses.append(mse_loss(net(x), y).item())
    assert_silent_and_learning(w, losses)


def test_gan_two_optimizers_two_backwards_and_n_critic(make_net, make_gan, data):
    """DCGAN's shape: D gets a real and a fake backward (undivided, from two lines) per step;
    G steps every other D step; G's backward also reaches D's parameters."""
    x, _ = data
    gen, disc = make_gan()
    opt_g = torch.optim.Adam(gen.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-3)
    bce = nn.BCEWithLogitsLoss()
    ones, zeros = torch.ones(64, 1), torch.zeros(64, 1)
    with loopcheck.watch([opt_d, opt_g], [gen, disc], mode="raise") as w:
        for i in range(STEPS):
            opt_d.zero_grad()
            bce(disc(x), ones).backward()
            fake = gen(torch.randn(64, 4))
            bce(disc(fake.detach()), zeros).backward()
            opt_d.step()
            if i % 2 == 0:
                opt_g.zero_grad()
                bce(disc(fake), ones).backward()
                opt_g.step()
    assert w.findings == [], w.report()
    assert json.loads(w.report("json"))["steps"] == [STEPS, STEPS // 2]


def test_lbfgs_closure(make_net, data):
    x, y = data
    net = make_net()
    opt = torch.optim.LBFGS(net.parameters(), lr=0.5, max_iter=4)
    losses = []

    def closure():
        opt.zero_grad()
        loss = mse_loss(net(x), y)
        loss.backward()
        return loss

    with loopcheck.watch(opt, net, mode="raise") as w:
        for _ in range(10):
            losses.append(opt.step(closure).item())
    assert_silent_and_learning(w, losses)


class SAM(torch.optim.Optimizer):
    """Sharpness-aware minimisation as commonly written: two passes per update; first_step
    perturbs the weights and clears, second_step restores them and steps the base optimizer."""

    def __init__(self, params, base, rho=0.05, **kwargs):
        super().__init__(params, {"rho": rho, **kwargs})
        self.base_optimizer = base(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups

    @torch.no_grad()
    def first_step(self, zero_grad=False):
        grads = [p.grad for group in self.param_groups for p in group["params"]]
        norm = torch.norm(torch.stack([g.norm() for g in grads]))
        for group in self.param_groups:
            for p in group["params"]:
                e_w = p.grad * group["rho"] / (norm + 1e-12)
                p.add_(e_w)
                self.state[p]["e_w"] = e_w
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad=False):
        for group in self.param_groups:
            for p in group["params"]:
                p.sub_(self.state[p]["e_w"])
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()


def test_sam_two_passes(make_net, data):
    x, y = data
    net = make_net()
    opt = SAM(net.parameters(), torch.optim.SGD, lr=0.05)
    losses = []
    with loopcheck.watch(opt, net, mode="raise") as w:
        for _ in range(STEPS):
            loss = mse_loss(net(x), y)
            loss.backward()
            opt.first_step(zero_grad=True)
            mse_loss(net(x), y).backward()
            opt.second_step(zero_grad=True)
            losses.append(loss.item())
    assert_silent_and_learning(w, losses)
    assert "step" in w.report()


def test_gradients_from_autograd_grad_assigned_by_hand(make_net, data):
    x, y = data
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    params = list(net.parameters())
    losses = []
    with loopcheck.watch(opt, net, mode="raise") as w:
        for _ in range(STEPS):
            loss = mse_loss(net(x), y)
            for p, g in zip(params, torch.autograd.grad(loss, params), strict=True):
                p.grad = g
            opt.step()
            losses.append(loss.item())
    assert_silent_and_learning(w, losses)


def test_amp_full_sequence_with_skipped_steps(make_net, data):
    """scale, backward, unscale_, clip, step, update; two steps get an Inf gradient, which the
    scaler skips: not a finding."""
    x, y = data
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu")
    losses = []
    with loopcheck.watch(opt, net, scaler=scaler, mode="raise") as w:
        for i in range(STEPS):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = mse_loss(net(x).float(), y)
            scaler.scale(loss).backward()
            if i in (3, 4):
                net.head.bias.grad.fill_(float("inf"))
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            scaler.step(opt)
            scaler.update()
            losses.append(loss.item())
    assert_silent_and_learning(w, losses)
    assert "scaler.step(skipped)" in w.report()


def test_scheduler_after_step_and_eval_between_steps(make_net, data):
    x, y = data
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.99)
    losses = []
    with loopcheck.watch(opt, net, scheduler=sched, mode="raise") as w:
        for _ in range(STEPS):
            net.train()
            opt.zero_grad()
            mse_loss(net(x), y).backward()
            opt.step()
            sched.step()
            net.eval()
            with torch.no_grad():
                losses.append(mse_loss(net(x), y).item())
    assert_silent_and_learning(w, losses)


IMPLEMENTATIONS = {
    "loop": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}


@pytest.mark.parametrize("kwargs", IMPLEMENTATIONS.values(), ids=IMPLEMENTATIONS)
@pytest.mark.parametrize("kind", [torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD])
def test_optimizer_implementations(kind, kwargs, make_net, data):
    x, y = data
    net = make_net()
    opt = kind(net.parameters(), lr=0.01, **kwargs)
    losses = []
    with loopcheck.watch(opt, net, mode="raise") as w:
        for _ in range(STEPS * 2):
            opt.zero_grad()
            loss = mse_loss(net(x), y)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 5.0, foreach=kwargs.get("foreach"))
            opt.step()
            losses.append(loss.item())
    assert_silent_and_learning(w, losses)


class DataSGD(torch.optim.Optimizer):
    """An old-style custom optimizer that writes through ``p.data`` (no version counter moves)."""

    def __init__(self, params, lr):
        super().__init__(params, {"lr": lr})

    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.data.add_(p.grad.data, alpha=-group["lr"])


def test_custom_optimizer_writing_through_data(make_net, data):
    x, y = data
    net = make_net()
    opt = DataSGD(net.parameters(), lr=0.05)
    losses = []
    with loopcheck.watch(opt, net, mode="raise") as w:
        for _ in range(STEPS):
            opt.zero_grad()
            loss = mse_loss(net(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert_silent_and_learning(w, losses)


def test_frozen_parameters_and_a_zero_learning_rate_group(make_net, data):
    x, y = data
    net = make_net()
    net.body[0].bias.requires_grad_(False)  # frozen, in no optimizer: not an orphan
    opt = torch.optim.SGD(
        [
            {"params": [net.body[0].weight, *net.head.parameters()]},
            {"params": [], "lr": 0.0},
        ],
        lr=0.05,
    )
    opt.add_param_group({"params": [], "lr": 0.0})
    losses = []
    with loopcheck.watch(opt, net, mode="raise") as w:
        for _ in range(STEPS):
            opt.zero_grad()
            loss = mse_loss(net(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert_silent_and_learning(w, losses)


def test_skipping_a_non_finite_batch(make_net, data):
    x, y = data
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    losses = []
    with loopcheck.watch(opt, net, mode="raise") as w:
        for i in range(STEPS):
            opt.zero_grad()
            loss = mse_loss(net(x), y)
            if i == 5:
                loss = loss * float("nan")  # a bad batch, caught before backward
            if not torch.isfinite(loss):
                continue
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert_silent_and_learning(w, losses)


@pytest.mark.parametrize("reentrant", [True, False])
def test_activation_checkpointing(reentrant, make_net, data):
    """Reentrant checkpointing runs a backward inside the backward: still one backward."""
    from torch.utils.checkpoint import checkpoint

    x, y = data
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    losses = []
    with loopcheck.watch(opt, net, mode="raise") as w:
        for _ in range(STEPS):
            opt.zero_grad()
            for xb, yb in zip(x.chunk(2), y.chunk(2), strict=True):
                hidden = net.body(xb.requires_grad_())
                out = checkpoint(net.head, hidden, use_reentrant=reentrant)
                (mse_loss(out, yb) / 2).backward()
            opt.step()
            losses.append(mse_loss(net(x), y).item())
    assert_silent_and_learning(w, losses)
    assert "zero backward x2 step" in w.report()
