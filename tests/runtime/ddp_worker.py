"""One rank of the DDP test (test_watch_ddp.py): gradient accumulation under ``no_sync()``, with
an optimizer that leaves out a layer on rank 1 only. Prints the findings as JSON."""

import json
import os
import sys
import warnings
from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.functional import mse_loss
from torch.nn.parallel import DistributedDataParallel

import loopcheck

MICRO = 4


def train(model, opt, x, y, steps, divide):
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        for i, (xb, yb) in enumerate(zip(x.chunk(MICRO), y.chunk(MICRO), strict=True)):
            sync = i == MICRO - 1
            with nullcontext() if sync else model.no_sync():
                loss = mse_loss(model(xb), yb)
                (loss / MICRO if divide else loss).backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        losses.append(mse_loss(model(x), y).item())
    return losses


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(8, 16)
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.body(x)))


def main() -> None:
    rank, port = int(sys.argv[1]), sys.argv[2]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    net = Net()
    model = DistributedDataParallel(net)
    # the bug: rank 1 builds its optimizer from the body only
    params = [*net.body.parameters()] + ([*net.head.parameters()] if rank == 0 else [])
    opt = torch.optim.SGD(params, lr=0.05)
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(64, 8, generator=g)
    y = x.sum(1, keepdim=True) / 4
    with loopcheck.watch(opt, model, mode="record") as w:
        losses = train(model, opt, x, y, steps=20, divide=True)
    with loopcheck.watch(opt, model, mode="record") as undivided:
        train(model, opt, x, y, steps=2, divide=False)
    print(
        json.dumps(
            {
                "rank": rank,
                "findings": [[f.code, f.message] for f in w.findings],
                "undivided": sorted({f.code for f in undivided.findings}),
                "losses": [losses[0], losses[-1]],
            }
        ),
        flush=True,
    )
    # both ranks leave together: a rank that tears gloo down while its peer is still talking
    # to it aborts the peer ("terminate called without an active exception")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
