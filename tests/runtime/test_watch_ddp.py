"""DDP on the CPU: two gloo processes accumulate under no_sync(); the watch finds the orphan
parameters of the rank whose optimizer left them out, and nothing on the other rank."""

import json
import os
import socket
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

import loopcheck  # noqa: E402

WORKER = os.path.join(os.path.dirname(__file__), "ddp_worker.py")


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_orphan_parameters_on_one_rank():
    port = free_port()
    root = os.path.dirname(os.path.dirname(loopcheck.__file__))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    ranks = [
        subprocess.Popen(
            [sys.executable, WORKER, str(rank), port],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for rank in (0, 1)
    ]
    results = []
    for process in ranks:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    zero, one = results
    assert zero["findings"] == []
    assert [code for code, _ in one["findings"]] == ["LC602"]
    assert "module.head.weight" in one["findings"][0][1]
    for rank in results:
        first, last = rank["losses"]
        assert last < 0.5 * first  # the body learns on both ranks
        # DDP's all-reduce rewrites the gradients after backward: not a hand rescale that
        # would excuse an undivided accumulated loss
        assert "LC201" in rank["undivided"]
