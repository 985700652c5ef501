"""Which functions the static observer may follow: those that can take part in a step."""

from __future__ import annotations

import libcst as cst

from loopcheck.static.index import FileContext

SOURCE = """
class TensorboardLogger:
    def __init__(self, writer):
        self.writer = writer
        self.step = 0

    def update(self, head="scalar", step=None, **kwargs):
        for k, v in kwargs.items():
            self.writer.add_scalar(head + "/" + k, v, self.step if step is None else step)


class MetricLogger:
    def update(self, **kwargs):
        for k, v in kwargs.items():
            self.meters[k].update(v)


def log_progress(step, loss):
    print(step, loss)


def train_step(model, optimizer, batch):
    loss = model(batch).mean()
    loss.backward()
    optimizer.step()


def apply_update(optimizer):
    optimizer.step()


def schedule(sched):
    sched.step()
"""


def _relevant_names() -> set[str]:
    ctx = FileContext(cst.parse_module(SOURCE), "t.py")
    names = set()
    for node in ctx.module.body:
        defs = node.body.body if type(node) is cst.ClassDef else [node]
        for func in defs:
            if type(func) is cst.FunctionDef and id(func) in ctx.relevant:
                names.add(func.name.value)
    return names


def test_a_step_counter_read_is_no_move() -> None:
    # a logger reading ``self.step`` or a ``step`` parameter takes no part in a step, nor does
    # a logger whose ``update`` shares its name with it: following them wasted the follow
    # budget of real trainers (ConvNeXt's engine) before the calls that matter
    relevant = _relevant_names()
    assert "log_progress" not in relevant
    assert "__init__" not in relevant
    assert "update" not in relevant


def test_a_step_called_is_a_move() -> None:
    assert {"train_step", "apply_update", "schedule"} <= _relevant_names()
