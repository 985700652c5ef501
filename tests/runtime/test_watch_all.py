"""``loopcheck.watch_all``: everything constructed in the block is watched from construction,
and the modules whose forward runs are the models."""

import pytest

torch = pytest.importorskip("torch")
from test_watch_idioms import SAM  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.functional import mse_loss  # noqa: E402

import loopcheck  # noqa: E402
from loopcheck.runtime import patching  # noqa: E402


def codes(w) -> set[str]:
    return {f.code for f in w.findings}


def test_the_first_iteration_is_checked(make_net, data):
    x, y = data
    with loopcheck.watch_all(mode="record") as w:
        net = make_net()
        opt = torch.optim.SGD(net.parameters(), lr=0.05)
        opt.zero_grad()
        mse_loss(net(x), y).backward()
        opt.zero_grad()
        opt.step()
    (finding,) = w.findings
    assert (finding.code, finding.step) == ("LC102", 0)
    assert w.checked


def test_schedulers_and_scalers_from_construction(make_net, data):
    x, y = data
    with loopcheck.watch_all(mode="record") as w:
        net = make_net()
        opt = torch.optim.SGD(net.parameters(), lr=0.05)
        sched = torch.optim.lr_scheduler.StepLR(opt, 5)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
        scaler = torch.amp.GradScaler("cpu")
        for _ in range(2):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = mse_loss(net(x).float(), y)
            scaler.scale(loss).backward()
            nn.utils.clip_grad_norm_(net.parameters(), 1.0)  # no unscale_: LC301
            scaler.step(opt)
            scaler.update()
            sched.step()
            plateau.step(loss.item())
    assert codes(w) == {"LC301"}
    assert w.findings[0].step == 0
    assert "scaler.update sched x2 zero forward backward clip scaler.step" in w.report()
    assert patching.installed() == 0


def test_orphan_parameters_of_a_model_found_by_its_forward(make_net, data):
    x, y = data
    with loopcheck.watch_all(mode="record") as w:
        net = make_net()
        opt = torch.optim.SGD(net.body.parameters(), lr=0.05)  # the head is left out
        for _ in range(3):
            opt.zero_grad()
            mse_loss(net(x), y).backward()
            opt.step()
    (finding,) = w.findings
    assert finding.code == "LC602"
    assert "head.weight" in finding.message and "head.bias" in finding.message


def test_no_optimizer_no_orphans(make_net, data):
    """Manual updates with no optimizer: nothing to report, and nothing was checked."""
    x, y = data
    with loopcheck.watch_all(mode="record") as w:
        net = make_net()
        for _ in range(3):
            net.zero_grad()
            mse_loss(net(x), y).backward()
            with torch.no_grad():
                for p in net.parameters():
                    p.add_(p.grad, alpha=-0.05)
    assert w.findings == []
    assert not w.checked
    assert "nothing was checked: no optimizer stepped" in w.report()


def test_an_optimizer_made_again_replaces_the_old_one(make_net, data):
    """A test or a script that makes a new optimizer for the same model (a new phase): the
    old one is out of the loop, not a victim of the new one's clears."""
    x, y = data
    net = make_net()
    with loopcheck.watch_all(mode="raise") as w:
        for kind in (torch.optim.SGD, torch.optim.Adam, torch.optim.SGD):
            opt = kind(net.parameters(), lr=0.01)
            for _ in range(3):
                opt.zero_grad()
                mse_loss(net(x), y).backward()
                opt.step()
    assert w.findings == []
    assert [o.steps for o in w.opts] == [3, 3, 3]


def test_sam_base_optimizer_counts_for_sam(make_net, data):
    x, y = data
    with loopcheck.watch_all(mode="raise") as w:
        net = make_net()
        opt = SAM(net.parameters(), torch.optim.SGD, lr=0.05)
        for _ in range(3):
            mse_loss(net(x), y).backward()
            opt.first_step(zero_grad=True)
            mse_loss(net(x), y).backward()
            opt.second_step(zero_grad=True)
    assert w.findings == []
    assert [type(o.opt).__name__ for o in w.opts] == ["SAM"]


def test_an_optimizer_made_before_is_watched_from_its_first_step(make_net, data):
    x, y = data
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    with loopcheck.watch_all(mode="record") as w:
        for _ in range(3):
            opt.zero_grad()
            mse_loss(net(x), y).backward()
            opt.zero_grad()
            opt.step()
    assert codes(w) == {"LC102"}
    assert {f.step for f in w.findings} == {1}


def test_max_steps_ends_the_block_cleanly(make_net, data):
    x, y = data
    ran = []
    with loopcheck.watch_all(mode="raise", max_steps=4) as w:
        net = make_net()
        opt = torch.optim.SGD(net.parameters(), lr=0.05)
        try:
            for _ in range(1000):
                opt.zero_grad()
                mse_loss(net(x), y).backward()
                opt.step()
                ran.append(1)
        except Exception:  # the script's own handler does not swallow the stop
            ran.append("caught")
        ran.append("after the loop")
    assert ran == [1, 1, 1, 1]
    assert [o.steps for o in w.opts] == [4]
    assert patching.installed() == 0
