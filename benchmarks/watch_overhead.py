"""What the runtime watch costs: step time watched / unwatched, measured side by side in one run.

The same model and optimizer alternate between blocks of unwatched and watched steps (a fresh
watch per block, so that entering and leaving are paid too), with a second unwatched block per
round as a control: what two identical blocks differ by is the machine's noise. Each round runs
the three blocks in another of their six orders (a block's place in the round moves its time by
a percent or two on a busy machine), and the figure is the median over rounds of the paired
ratio watched / unwatched. A first figure isolates the watch's own cost in microseconds, on
models that do almost no arithmetic. The loop is the full protocol: zero_grad, forward,
backward, clip_grad_norm_, step; the watch runs in record mode (as warn: no synchronisation).

    python benchmarks/watch_overhead.py [--device cpu|cuda] [--rounds R] [--steps K]
                                        [--models fixed,mlp,gpt] [--threads N]

``--device cpu`` (default): the fixed cost, a 4x512 MLP and a 4x128 GPT on the CPU (about three
minutes on a 2-core machine). ``--device cuda``: a GPT-2-small-shaped model (12x768, sequence
1024) in bf16 autocast and the MLP on the GPU, with peak memory watched vs unwatched. Targets
(DESIGN.md, issue 9): at most 2% on the CPU steps, under 1% on the GPU; peak memory increase
under 1% of the model.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

import loopcheck


class Block(nn.Module):
    """A pre-norm transformer block: causal self-attention and an MLP."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.up = nn.Linear(width, 4 * width)
        self.down = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(width, dim=2)
        q, k, v = (t.view(batch, length, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, length, width))
        return x + self.down(F.gelu(self.up(self.norm2(x))))


class GPT(nn.Module):
    """A GPT-style language model; the output head shares the token embedding."""

    def __init__(self, vocab: int, length: int, width: int, depth: int, heads: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, width)
        self.positions = nn.Embedding(length, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.tokens.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.tokens(idx) + self.positions(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


@dataclass
class Case:
    name: str
    model: nn.Module
    inputs: torch.Tensor
    targets: torch.Tensor
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    device: torch.device
    autocast: torch.dtype | None = None


def tiny_case(tensors: int) -> Case:
    """Almost no arithmetic: what remains of a step is the watch's own cost."""
    torch.manual_seed(0)
    model = nn.Sequential(*(nn.Linear(2, 2) for _ in range(tensors // 2)))
    inputs, targets = torch.randn(4, 2), torch.randn(4, 2)
    return Case(f"tiny {tensors} tensors", model, inputs, targets, F.mse_loss, torch.device("cpu"))


def fixed_cost(rounds: int) -> None:
    """The watch's cost in microseconds per step, and per parameter tensor, on models that do
    almost no arithmetic (the fastest blocks of each kind, CPU time)."""
    costs = {}
    for tensors in (10, 100):
        case = tiny_case(tensors)
        opt = torch.optim.AdamW(case.model.parameters(), lr=1e-4)
        for _ in range(2):
            block(case, opt, 20, False)
            block(case, opt, 20, True)
        plain, watched = [], []
        for i in range(rounds):
            for is_watched in (False, True) if i % 2 == 0 else (True, False):
                (watched if is_watched else plain).append(block(case, opt, 50, is_watched)[1])
        costs[tensors] = min(watched) - min(plain)
    per_tensor = (costs[100] - costs[10]) / 90
    print(
        f"fixed cost (CPU time, nearly compute-free models): {costs[10] * 1e6:.0f} us/step with "
        f"10 parameter tensors, {costs[100] * 1e6:.0f} us/step with 100: about "
        f"{(costs[10] - 10 * per_tensor) * 1e6:.0f} us per step + {per_tensor * 1e6:.1f} us per "
        f"parameter tensor"
    )


def mlp_case(device: torch.device) -> Case:
    torch.manual_seed(0)
    width, batch = 512, 64
    layers: list[nn.Module] = []
    for _ in range(4):
        layers += [nn.Linear(width, width), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(width, 10)).to(device)
    inputs = torch.randn(batch, width, device=device)
    targets = torch.randint(0, 10, (batch,), device=device)
    return Case(f"MLP 4x{width}, batch {batch}", model, inputs, targets, F.cross_entropy, device)


def gpt_case(device: torch.device, small: bool) -> Case:
    torch.manual_seed(0)
    if small:
        vocab, length, width, depth, heads, batch = 1024, 64, 128, 4, 4, 8
        name = f"GPT {depth}x{width}, seq {length}, batch {batch}"
        dtype = None
    else:  # GPT-2 small
        vocab, length, width, depth, heads, batch = 50304, 1024, 768, 12, 12, 8
        name = "GPT-2 small 12x768, seq 1024, batch 8, bf16"
        dtype = torch.bfloat16
    model = GPT(vocab, length, width, depth, heads).to(device)
    tokens = torch.randint(0, vocab, (batch, length + 1), device=device)

    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())

    return Case(name, model, tokens[:, :-1], tokens[:, 1:], loss, device, dtype)


def step(case: Case, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad(set_to_none=True)
    autocast = (
        torch.autocast(case.device.type, dtype=case.autocast)
        if case.autocast is not None
        else contextlib.nullcontext()
    )
    with autocast:
        loss = case.loss(case.model(case.inputs), case.targets)
    loss.backward()
    nn.utils.clip_grad_norm_(case.model.parameters(), 1.0)
    opt.step()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def block(case: Case, opt: torch.optim.Optimizer, steps: int, watched: bool) -> tuple[float, float]:
    """Wall-clock and process CPU seconds per step over ``steps`` steps (a fresh watch around
    the block when watched). CPU time is what a shared machine's other load disturbs least."""
    sync(case.device)
    wall, cpu = time.perf_counter(), time.process_time()
    with loopcheck.watch(opt, case.model, mode="record") if watched else contextlib.nullcontext():
        for _ in range(steps):
            step(case, opt)
        sync(case.device)  # the block ends when the device is done, inside the watch
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def peak_memory(case: Case, opt: torch.optim.Optimizer, watched: bool) -> int:
    torch.cuda.synchronize(case.device)
    torch.cuda.reset_peak_memory_stats(case.device)
    block(case, opt, 3, watched)
    return torch.cuda.max_memory_allocated(case.device)


ORDERS = list(itertools.permutations(("plain", "watched", "control")))


def measure(case: Case, rounds: int, steps: int) -> None:
    opt = torch.optim.AdamW(case.model.parameters(), lr=1e-4)
    params = list(case.model.parameters())
    model_bytes = sum(p.numel() * p.element_size() for p in params)
    for _ in range(2):  # warm up both paths (allocator, kernels, optimizer state)
        block(case, opt, 2, False)
        block(case, opt, 2, True)
    times: dict[str, list[tuple[float, float]]] = {"plain": [], "watched": [], "control": []}
    for i in range(rounds):
        for kind in ORDERS[i % len(ORDERS)]:
            times[kind].append(block(case, opt, steps, kind == "watched"))
    print(
        f"{case.name} on {case.device.type}: {len(params)} parameter tensors, "
        f"{model_bytes / 2**20:.1f} MiB; {rounds} rounds x 3 blocks x {steps} steps"
    )
    clocks = ("wall", "cpu") if case.device.type == "cpu" else ("wall",)
    for k, clock in enumerate(clocks):
        plain = [t[k] for t in times["plain"]]
        watched = _paired([t[k] for t in times["watched"]], plain)
        control = _paired([t[k] for t in times["control"]], plain)
        print(
            f"  {clock:>4} time: unwatched {statistics.median(plain) * 1e3:8.3f} ms/step; "
            f"watched/unwatched {_percent(watched[1])} (median of paired ratios; quartiles "
            f"{_percent(watched[0])} .. {_percent(watched[2])}); control unwatched/unwatched "
            f"{_percent(control[1])} ({_percent(control[0])} .. {_percent(control[2])})"
        )
    if case.device.type == "cuda":
        peak_plain = peak_memory(case, opt, False)
        peak_watched = peak_memory(case, opt, True)
        extra = peak_watched - peak_plain
        print(
            f"  peak memory: unwatched {peak_plain / 2**20:.1f} MiB, watched "
            f"{peak_watched / 2**20:.1f} MiB: {extra / 2**20:+.2f} MiB = "
            f"{extra / model_bytes * 100:+.3f}% of the model"
        )


def _paired(other: list[float], plain: list[float]) -> tuple[float, float, float]:
    """Each block against the unwatched block of its round (slow drifts of the machine's load
    cancel out): the quartiles and the median of the ratios."""
    ratios = sorted(o / p for o, p in zip(other, plain, strict=True))
    low, middle, high = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    return low, middle, high


def _percent(ratio: float) -> str:
    return f"{(ratio - 1) * 100:+.2f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--rounds", type=int, default=24, help="rounds per model (6 orders)")
    parser.add_argument("--steps", type=int, default=0, help="steps per block (0: per model)")
    parser.add_argument(
        "--models", default="", help="which of fixed, mlp, gpt (CPU) or gpt2, mlp (CUDA)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads (default 1: steadiest; 0: torch's)"
    )
    options = parser.parse_args()
    if options.threads:
        torch.set_num_threads(options.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    if options.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device")
        cuda = torch.device("cuda")
        print(f"GPU: {torch.cuda.get_device_name(cuda)}")
        models = set((options.models or "gpt2,mlp").split(","))
        if "gpt2" in models:
            measure(gpt_case(cuda, small=False), options.rounds, options.steps or 10)
        if "mlp" in models:
            measure(mlp_case(cuda), options.rounds, options.steps or 50)
        return
    cpu = torch.device("cpu")
    models = set((options.models or "fixed,mlp,gpt").split(","))
    if "fixed" in models:
        fixed_cost(options.rounds)
    if "mlp" in models:
        measure(mlp_case(cpu), options.rounds, options.steps or 40)
    if "gpt" in models:
        measure(gpt_case(cpu, small=True), options.rounds, options.steps or 10)


if __name__ == "__main__":
    main()
