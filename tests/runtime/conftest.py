"""Tiny real models and data for the runtime watch's tests.

torch is imported inside the fixtures: without it, the test modules that need it skip
themselves, and the rest of the suite still runs.
"""

import os

import pytest

# An error of the watch's own fails our tests; users' runs go on unwatched (watcher._Guard).
os.environ.setdefault("LOOPCHECK_STRICT", "1")

try:
    import torch
except ModuleNotFoundError:
    pass
else:
    # Tiny models run fastest on one thread; several threads on a small shared machine spend
    # their time waiting for each other.
    torch.set_num_threads(1)


@pytest.fixture
def data():
    """A learnable regression problem: 64 samples, 8 features."""
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    y = x @ torch.randn(8, 1, generator=g) + 0.1 * torch.randn(64, 1, generator=g)
    return x, y


@pytest.fixture
def make_net():
    """Makes an MLP with a body and a head (so that tests can leave one out), with the same
    initial weights on every call."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(8, 16), nn.Tanh())
            self.head = nn.Linear(16, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(x))

    def make() -> Net:
        torch.manual_seed(0)
        return Net()

    return make


@pytest.fixture
def make_gan():
    """Makes a tiny GAN, (generator, discriminator): 4 noise values to the 8 features of
    ``data``, and 8 features to one logit; the same initial weights on every call."""
    from torch import nn

    def make() -> tuple[nn.Module, nn.Module]:
        torch.manual_seed(0)
        gen = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 8))
        disc = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
        return gen, disc

    return make
