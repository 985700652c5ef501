"""The watch itself: it changes no number, leaves nothing behind, nests, reports, and warns or
raises as asked."""

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
import torch.nn.utils.clip_grad as clip_grad_module  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.functional import mse_loss  # noqa: E402
from torch.optim.optimizer import (  # noqa: E402
    _global_optimizer_post_hooks,
    _global_optimizer_pre_hooks,
)

import loopcheck  # noqa: E402
from loopcheck.runtime import patching  # noqa: E402
from loopcheck.runtime.device import DeferredChecks, Pending  # noqa: E402

SLOW = pytest.mark.skipif(
    not os.environ.get("LOOPCHECK_SLOW"), reason="slow: set LOOPCHECK_SLOW=1 to run"
)


def train(net, opt, data, steps=10, *, bug=False, scaler=None, clip=True, micro=1):
    """A training loop with clipping, optional accumulation and AMP; ``bug`` clears the
    gradients between backward and step (LC102)."""
    x, y = data
    for _ in range(steps):
        opt.zero_grad()
        for xb, yb in zip(x.chunk(micro), y.chunk(micro), strict=True):
            if scaler is None:
                (mse_loss(net(xb), yb) / micro).backward()
            else:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = mse_loss(net(xb).float(), yb) / micro
                scaler.scale(loss).backward()
        if bug:
            opt.zero_grad()
        if scaler is not None:
            scaler.unscale_(opt)
        if clip:
            nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        if scaler is None:
            opt.step()
        else:
            scaler.step(opt)
            scaler.update()


def leftovers(opt, net, scaler=None) -> list[str]:
    """Everything a watch could have left behind."""
    found = []
    if _global_optimizer_pre_hooks or _global_optimizer_post_hooks:
        found.append("global optimizer hooks")
    if opt._optimizer_step_pre_hooks or opt._optimizer_step_post_hooks:
        found.append("optimizer hooks")
    for name, p in net.named_parameters():
        if getattr(p, "_post_accumulate_grad_hooks", None):
            found.append(f"hook on {name}")
    if net._forward_pre_hooks:
        found.append("forward pre-hook")
    owners = {
        "zero_grad": [opt, net],
        "scale": [scaler],
        "unscale_": [scaler],
        "step": [scaler],
        "update": [scaler],
    }
    for attr, objects in owners.items():
        for owner in objects:
            if owner is not None and attr in vars(owner):
                found.append(f"{type(owner).__name__}.{attr}")
    classes = (torch.optim.Optimizer, nn.Module, nn.Parameter, torch.amp.GradScaler)
    classes += tuple(torch.optim.lr_scheduler.LRScheduler.__subclasses__())
    for cls in (*classes, torch.optim.lr_scheduler.LRScheduler):
        for name, value in vars(cls).items():
            if getattr(value, "__loopcheck_wrapper__", False):
                found.append(f"{cls.__name__}.{name}")
    if getattr(torch.autograd.backward, "__loopcheck_wrapper__", False):
        found.append("torch.autograd.backward")
    for module in (clip_grad_module, nn.utils):
        for name in dir(module):
            if getattr(getattr(module, name), "__loopcheck_wrapper__", False):
                found.append(f"{module.__name__}.{name}")
    if "__setattr__" in vars(nn.Parameter):
        found.append("Parameter.__setattr__")
    if patching.installed():
        found.append("patches")
    return found


OPTIMIZERS = {
    "sgd-momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    "adam-foreach": lambda p: torch.optim.Adam(p, lr=1e-2, foreach=True),
    "adamw-fused": lambda p: torch.optim.AdamW(p, lr=1e-2, fused=True),
}


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "amp"])
@pytest.mark.parametrize("make_opt", OPTIMIZERS.values(), ids=OPTIMIZERS)
def test_watched_run_ends_bit_identical(make_opt, amp, make_net, data):
    finals = []
    for watched in (False, True):
        net = make_net()
        opt = make_opt(net.parameters())
        scaler = torch.amp.GradScaler("cpu") if amp else None
        ctx = loopcheck.watch(opt, net, scaler=scaler, mode="raise") if watched else None
        with ctx or contextlib.nullcontext():
            train(net, opt, data, micro=2, scaler=scaler)
        finals.append([p.detach().clone() for p in net.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*finals, strict=True))


def test_nothing_left_after_exit(make_net, data):
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu")
    sched = torch.optim.lr_scheduler.StepLR(opt, 5)
    before = leftovers(opt, net, scaler)
    with loopcheck.watch(opt, net, scaler=scaler, scheduler=sched, mode="record"):
        assert leftovers(opt, net, scaler)  # the check sees what a watch installs
        train(net, opt, data, scaler=scaler)
    assert leftovers(opt, net, scaler) == before == []


def test_watched_objects_save_and_copy_as_usual(tmp_path, data):
    """The watch stores nothing in the instances it watches: checkpoints hold no wrapper
    (a scheduler's state_dict is its __dict__) and a deep copy made while watching (an EMA
    model) is a plain object."""
    import copy

    net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu")
    sched = torch.optim.lr_scheduler.StepLR(opt, 5)
    train(net, opt, data, steps=1, scaler=scaler)  # the objects' own lazy attributes
    attributes = [dict(vars(owner)) for owner in (net, opt, scaler, sched)]
    with loopcheck.watch(opt, net, scaler=scaler, scheduler=sched, mode="raise"):
        train(net, opt, data, steps=2, scaler=scaler)
        for owner, before in zip((net, opt, scaler, sched), attributes, strict=True):
            assert vars(owner).keys() == before.keys()
            assert all(vars(owner)[k] is v for k, v in before.items() if callable(v))
        torch.save(
            {"model": net, "opt": opt, "sched": sched.state_dict(), "scaler": scaler},
            tmp_path / "checkpoint.pt",
        )
        ema = copy.deepcopy(net)
        train(net, opt, data, steps=2, scaler=scaler)
    assert "zero_grad" not in vars(ema)
    loaded = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert set(loaded["sched"]) == set(sched.state_dict())


@pytest.mark.parametrize("mode", ["record", "raise"])
def test_nothing_left_after_an_exception(mode, make_net, data):
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    with pytest.raises((KeyError, loopcheck.LoopcheckError)):
        with loopcheck.watch(opt, net, mode=mode):
            train(net, opt, data, steps=2, bug=mode == "raise")
            raise KeyError("the training code failed")
    assert leftovers(opt, net) == []
    # and the objects still work, unwatched
    train(net, opt, data, steps=2)


def test_learning_rate_scheduler_wrapper_on_step_is_kept(make_net, data):
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    torch.optim.lr_scheduler.StepLR(opt, 5)  # wraps opt.step on the instance
    wrapped = vars(opt)["step"]
    with loopcheck.watch(opt, net, mode="raise"):
        train(net, opt, data, steps=2)
    assert vars(opt)["step"] is wrapped


def test_nested_and_repeated_watches(make_net, data):
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    with loopcheck.watch(opt, net, mode="record") as outer:
        with loopcheck.watch(opt, net, mode="record") as inner:
            train(net, opt, data, steps=2, bug=True)
        train(net, opt, data, steps=3, bug=True)
    with loopcheck.watch(opt, net, mode="record") as again:
        train(net, opt, data, steps=1, bug=True)
    assert [f.code for f in inner.findings] == ["LC102"]
    assert [f.code for f in outer.findings] == ["LC102"]
    assert [f.code for f in again.findings] == ["LC102"]
    assert sum(outer.counts.values()) == 5
    assert sum(inner.counts.values()) == 2
    assert leftovers(opt, net) == []


def test_watches_may_end_in_any_order(make_net, data):
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    first = loopcheck.watch(opt, net, mode="record")
    second = loopcheck.watch(opt, net, mode="record")
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    train(net, opt, data, steps=2, bug=True)
    second.__exit__(None, None, None)
    assert first.findings == []
    assert [f.code for f in second.findings] == ["LC102"]
    assert leftovers(opt, net) == []


def test_warn_once_per_code_and_place(make_net, data):
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with loopcheck.watch(opt, net) as w:
            train(net, opt, data, steps=10, bug=True)
    ours = [c for c in caught if issubclass(c.category, loopcheck.LoopcheckWarning)]
    assert len(ours) == 1
    assert issubclass(loopcheck.LoopcheckWarning, UserWarning)
    assert "LC102" in str(ours[0].message)
    assert ours[0].filename == __file__
    assert ours[0].lineno == w.findings[0].line


def test_warnings_can_be_made_errors(make_net, data):
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("error", loopcheck.LoopcheckWarning)
        with pytest.raises(loopcheck.LoopcheckWarning, match="LC102"):
            with loopcheck.watch(opt, net):
                train(net, opt, data, steps=2, bug=True)


def test_raise_at_the_faulty_event(make_net, data):
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    x, y = data
    with pytest.raises(loopcheck.LoopcheckError) as excinfo:
        with loopcheck.watch(opt, net, mode="raise"):
            for _ in range(3):
                opt.zero_grad()
                mse_loss(net(x), y).backward()
                opt.zero_grad()
                opt.step()  # the step completes LC102: it raises here
    finding = excinfo.value.finding
    assert finding.code == "LC102"
    assert finding.step == 0
    ours = [e for e in excinfo.traceback if str(e.path) == __file__]
    assert ours[-1].statement.lines[0].strip().startswith("opt.step()")


def test_record_mode_is_silent(make_net, data):
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with loopcheck.watch(opt, net, mode="record") as w:
            train(net, opt, data, steps=2, bug=True)
    assert [f.code for f in w.findings] == ["LC102"]


def test_report_text_and_json(make_net, data):
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    with loopcheck.watch(opt, net, mode="record") as w:
        train(net, opt, data, steps=5)
        train(net, opt, data, steps=2, bug=True)
    text = w.report()
    assert "steps 0-4 (x5)" in text
    assert "zero forward backward clip step" in text
    assert "steps 5-6 (x2)" in text and "<- LC102" in text
    assert "LC102 zero-grad-after-backward" in text
    report = json.loads(w.report("json"))
    assert report["steps"] == [7]
    assert [t["count"] for t in report["trace"]] == [5, 2]
    assert report["trace"][1]["findings"] == ["LC102"]
    (finding,) = report["findings"]
    assert finding["code"] == "LC102" and finding["count"] == 2 and finding["step"] == 5
    with pytest.raises(ValueError):
        w.report("xml")


def test_bad_arguments(make_net):
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    with pytest.raises(ValueError, match="mode"):
        loopcheck.watch(opt, net, mode="loud")
    with pytest.raises(TypeError, match="opt"):
        loopcheck.watch(net, net)
    w = loopcheck.watch(opt, net)
    with w:
        with pytest.raises(RuntimeError, match="once"):
            w.__enter__()


def test_several_optimizers_and_orphans_by_name(data):
    torch.manual_seed(0)
    encoder, decoder, extra = nn.Linear(8, 4), nn.Linear(4, 1), nn.Linear(4, 1)
    model = nn.ModuleDict({"encoder": encoder, "decoder": decoder, "extra": extra})
    opt_e = torch.optim.SGD(encoder.parameters(), lr=0.05)
    opt_d = torch.optim.SGD(decoder.parameters(), lr=0.05)
    x, y = data
    with loopcheck.watch([opt_e, opt_d], model, mode="record") as w:
        for _ in range(3):
            opt_e.zero_grad()
            opt_d.zero_grad()
            h = encoder(x)
            (mse_loss(decoder(h), y) + mse_loss(extra(h), y)).backward()
            opt_e.step()
            opt_d.step()
    (finding,) = w.findings
    assert finding.code == "LC602" and finding.optimizer is None
    assert "extra.weight" in finding.message and "extra.bias" in finding.message
    assert "step[1]" in w.report()


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=SLOW)])
@pytest.mark.parametrize("watch_compiled", [True, False], ids=["compiled", "inner"])
def test_torch_compile(backend, watch_compiled, make_net, data):
    finals, watches = [], []
    for watched, bug in ((False, False), (True, False), (True, True)):
        net = make_net()
        compiled = torch.compile(net, backend=backend)
        opt = torch.optim.SGD(net.parameters(), lr=0.05)
        ctx = loopcheck.watch(opt, compiled if watch_compiled else net, mode="record")
        with ctx if watched else contextlib.nullcontext():
            train(compiled, opt, data, steps=5, bug=bug)
        finals.append([p.detach().clone() for p in net.parameters()])
        watches.append(ctx)
    assert all(torch.equal(a, b) for a, b in zip(finals[0], finals[1], strict=True))
    assert watches[1].findings == []
    assert [f.code for f in watches[2].findings] == ["LC102"]
    # the compiled module's forward runs outside the graph; the inner one's inside it
    assert ("zero forward backward" in watches[1].report()) == watch_compiled


@pytest.mark.parametrize("kind", ["compiled", "inner", "watch_all"])
def test_torch_compile_no_recompilation_and_no_torch_warning(kind, make_net, data):
    """The hooks that compiled code reaches read nothing dynamo guards on: a module compiled
    before the watch is not recompiled when the watch begins, runs or ends, and torch has
    nothing to warn about. (Given the module inside the compiled one, the watch wraps its
    class's forward, which the compiled code called: one recompilation, when it begins.)"""
    compiles = []

    def backend(graph, inputs):
        compiles.append(graph)
        return graph.forward

    net = make_net()
    compiled = torch.compile(net, backend=backend)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    train(compiled, opt, data, steps=2)  # compiled here, before any watch
    assert len(compiles) == 1
    if kind == "watch_all":
        watch = loopcheck.watch_all(mode="record")
    else:
        watch = loopcheck.watch(opt, compiled if kind == "compiled" else net, mode="record")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with watch:
            train(compiled, opt, data, steps=5)
            train(compiled, opt, data, steps=1, bug=True)
        train(compiled, opt, data, steps=2)
    assert len(compiles) == (2 if kind == "inner" else 1)
    assert [str(w.message) for w in caught] == []
    assert [f.code for f in watch.findings] == ["LC102"]
    trace = watch.report().split("findings")[0]
    assert ("zero forward backward" in trace) == (kind != "inner")


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")  # torch's own
def test_a_compiled_training_step_is_not_broken_nor_accused(make_net, data):
    """zero_grad and step inside a torch.compile'd function: the watch's wrappers step aside
    while dynamo traces (no graph break, no warning, no recompilation), and the moves it then
    cannot see accuse nobody."""
    compiles = []

    def backend(graph, inputs):
        compiles.append(graph)
        return graph.forward

    x, y = data
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)

    @torch.compile(backend=backend)
    def train_step():
        opt.zero_grad()
        loss = mse_loss(net(x), y)
        loss.backward()
        opt.step()
        return loss

    train_step()
    before = len(compiles)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with loopcheck.watch(opt, net, mode="raise") as w:
            losses = [train_step().item() for _ in range(20)]
        train_step()
    assert len(compiles) == before
    assert [str(c.message) for c in caught] == []
    assert w.findings == []
    assert losses[-1] < losses[0]


def test_deferred_checks_run_in_order_once_ready():
    ran = []
    checks = DeferredChecks(read_now=False)
    ready = {"a": False, "b": True}
    for name, value in (("a", True), ("b", True), ("c", False)):
        checks.defer(
            Pending(
                ready=lambda n=name: ready.get(n, True),
                wait=lambda n=name: ready.__setitem__(n, True),
                value=lambda v=value: v,
                on_true=lambda n=name: ran.append(n),
            )
        )
    checks.poll()
    assert ran == [] and len(checks) == 3  # "a" is not ready: nothing overtakes it
    ready["a"] = True
    checks.poll()
    assert ran == ["a", "b"] and len(checks) == 0
    checks.defer(Pending(lambda: False, lambda: None, lambda: True, lambda: ran.append("d")))
    checks.flush()
    assert ran == ["a", "b", "d"]


def test_cpu_checks_are_read_at_once():
    ran = []
    checks = DeferredChecks(read_now=False)
    checks.check(torch.tensor(True), lambda: ran.append(1))
    checks.check(torch.tensor(False), lambda: ran.append(2))
    assert ran == [1] and len(checks) == 0


def test_import_without_torch(tmp_path):
    """The linter works without torch; watch says that it needs it."""
    script = textwrap.dedent(
        """
        import sys

        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("No module named 'torch'")

        sys.meta_path.insert(0, NoTorch())
        import loopcheck
        from loopcheck.api import lint_source

        print(len(lint_source("x = 1\\n")))
        for call in (
            lambda: loopcheck.watch(None, None),
            lambda: loopcheck.watch_all(),
            lambda: loopcheck.assert_equivalent_updates(None, None),
        ):
            try:
                call()
            except ImportError as exc:
                print("ImportError:", exc)
        assert "torch" not in sys.modules
        """
    )
    root = os.path.dirname(os.path.dirname(loopcheck.__file__))
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": root},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "0"
    for name in ("watch", "watch_all", "assert_equivalent_updates"):
        assert f"loopcheck.{name} needs PyTorch" in result.stdout


def test_calls_through_an_installed_library(tmp_path, monkeypatch, make_net, data):
    """A finding points at the user's line that called the library (Accelerate's backward, say);
    calls from two user lines through one library line are two places."""
    from loopcheck.runtime import sites

    (tmp_path / "fakelib.py").write_text("def backward(loss):\n    loss.backward()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sites, "INSTALLED", (str(tmp_path) + os.sep,))
    import fakelib

    x, y = data
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    with loopcheck.watch(opt, net, mode="record") as two_lines:
        for _ in range(3):
            opt.zero_grad()
            fakelib.backward(mse_loss(net(x[:32]), y[:32]))  # a GAN's real half...
            fakelib.backward(mse_loss(net(x[32:]), y[32:]))  # ... and fake half: not LC201
            opt.step()
    assert two_lines.findings == []
    with loopcheck.watch(opt, net, mode="record") as one_line:
        for _ in range(3):
            opt.zero_grad()
            for xb, yb in zip(x.chunk(2), y.chunk(2), strict=True):
                fakelib.backward(mse_loss(net(xb), yb))  # accumulation, undivided
            opt.step()
    (finding,) = one_line.findings
    assert finding.code == "LC201"
    assert finding.file == __file__
    assert "fakelib.backward" in Path(__file__).read_text().splitlines()[finding.line - 1]


def test_an_internal_error_stops_the_watch_not_the_training(monkeypatch, make_net, data):
    from loopcheck.runtime.sources.optimizer import OptimizerEvents

    def broken(self, o):
        raise ZeroDivisionError("a bug of the watch's own")

    monkeypatch.setattr(OptimizerEvents, "judge_step", broken)
    monkeypatch.setenv("LOOPCHECK_STRICT", "0")
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    with pytest.warns(loopcheck.LoopcheckWarning, match="internal error"):
        with loopcheck.watch(opt, net, mode="raise") as w:
            train(net, opt, data, steps=3, bug=True)
    assert w.findings == []
    assert "ZeroDivisionError" in w.stopped and "internal error" in w.report()
    assert leftovers(opt, net) == []
    monkeypatch.setenv("LOOPCHECK_STRICT", "1")
    with pytest.raises(ZeroDivisionError):
        with loopcheck.watch(opt, net, mode="raise"):
            train(net, opt, data, steps=1)
