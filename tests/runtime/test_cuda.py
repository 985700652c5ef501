"""The watch on a GPU: it changes no number and, in warn and record modes, never makes the host
wait for the device. Skipped without CUDA (``benchmarks/gpu_check.sh`` runs them on a GPU)."""

import contextlib
import warnings

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)

from torch import nn  # noqa: E402
from torch.nn.functional import mse_loss  # noqa: E402

import loopcheck  # noqa: E402

CUDA = torch.device("cuda")


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 256), nn.GELU(), nn.Linear(256, 1)
    ).to(CUDA)


def batches(n: int = 4):
    g = torch.Generator(device=CUDA).manual_seed(0)
    x = torch.randn(n, 128, 64, device=CUDA, generator=g)
    return x, x.sum(-1, keepdim=True).tanh()


def train(model, opt, steps, *, micro=2, bug=False):
    """bf16 autocast, accumulation, clipping; nothing here reads a device value."""
    x, y = batches()
    for i in range(steps):
        opt.zero_grad(set_to_none=True)
        for xb, yb in zip(x[i % 4].chunk(micro), y[i % 4].chunk(micro), strict=True):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = mse_loss(model(xb).float(), yb) / micro
            loss.backward()
        if bug:
            opt.zero_grad(set_to_none=True)
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()


OPTIMIZERS = {
    "adamw-foreach": lambda p: torch.optim.AdamW(p, lr=1e-3, foreach=True),
    "adamw-fused": lambda p: torch.optim.AdamW(p, lr=1e-3, fused=True),
    "sgd-momentum": lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9),
}


@pytest.mark.parametrize("make_opt", OPTIMIZERS.values(), ids=OPTIMIZERS)
def test_identical_parameters_with_and_without_the_watch(make_opt):
    finals = []
    for watched in (False, True):
        model = make_model()
        opt = make_opt(model.parameters())
        ctx = loopcheck.watch(opt, model, mode="record") if watched else None
        with ctx or contextlib.nullcontext():
            train(model, opt, 20)
        torch.cuda.synchronize()
        finals.append([p.detach().clone() for p in model.parameters()])
        if ctx is not None:
            assert ctx.findings == [], ctx.report()
    assert all(torch.equal(a, b) for a, b in zip(*finals, strict=True))


@pytest.mark.parametrize("mode", ["warn", "record"])
@pytest.mark.parametrize("bug", [False, True], ids=["clean", "LC102"])
def test_no_host_synchronisation_per_step(mode, bug):
    """torch raises at any synchronising call while the sync debug mode is "error": the
    watched steps make none; the findings arrive when the report is asked for."""
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    train(model, opt, 3)  # warm up: optimizer state, allocator, pinned memory
    w = loopcheck.watch(opt, model, mode=mode)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", loopcheck.LoopcheckWarning)
        with w:
            train(model, opt, 2)  # the watch's own first moves (its caches, pinned buffers)
            torch.cuda.set_sync_debug_mode("error")
            try:
                train(model, opt, 20, bug=bug)
            finally:
                torch.cuda.set_sync_debug_mode("default")
    assert [f.code for f in w.findings] == (["LC102"] if bug else [])
    assert "html" in w.report("html")


def test_device_values_are_read_without_waiting_and_reported():
    """A non-finite loss on the GPU (LC604) is found once its value has arrived."""
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    x, y = batches()
    with loopcheck.watch(opt, model, mode="record") as w:
        for i in range(5):
            opt.zero_grad()
            loss = mse_loss(model(x[0]), y[0])
            if i == 3:
                loss = loss * float("nan")
            loss.backward()
            opt.step()
    assert [f.code for f in w.findings] == ["LC604"]
    assert w.findings[0].step == 3
