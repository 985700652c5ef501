"""LC206, ``loopcheck.assert_equivalent_updates``: a tiny language model trained on a padded
batch, in one go and as micro-batches; the ways of normalising the accumulated loss that are
the full batch's pass, the others fail with their likely cause."""

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn.functional import cross_entropy  # noqa: E402

import loopcheck  # noqa: E402

VOCAB, WIDTH, LENGTH = 13, 8, 12
MICRO = 4


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.mix = nn.Linear(WIDTH, WIDTH)
        self.head = nn.Linear(WIDTH, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mix(self.embed(tokens))))


def batch(uneven: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """8 sequences; with ``uneven``, of very different lengths (padding masked out)."""
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (8, LENGTH + 1), generator=g)
    lengths = torch.tensor([12, 2, 3, 12, 1, 12, 6, 4]) if uneven else torch.full((8,), 12)
    mask = (torch.arange(LENGTH)[None, :] < lengths[:, None]).float()
    return tokens[:, :-1], tokens[:, 1:], mask


def token_losses(model, inputs, targets):
    logits = model(inputs)
    return cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(
        targets.shape
    )


def train(micro: int, normalise: str, uneven: bool = True, steps: int = 3) -> None:
    """The user's training code: ``steps`` optimizer steps on one batch split in ``micro``."""
    model = TinyLM()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    inputs, targets, mask = batch(uneven)
    total_tokens = mask.sum()
    for _ in range(steps):
        opt.zero_grad()
        for x, y, m in zip(
            inputs.chunk(micro), targets.chunk(micro), mask.chunk(micro), strict=True
        ):
            per_token = token_losses(model, x, y) * m
            if normalise == "whole-batch-tokens":  # correct
                loss = per_token.sum() / total_tokens
            elif normalise == "own-tokens-over-n":  # each micro-batch's own mean, then / N
                loss = per_token.sum() / m.sum() / micro
            elif normalise == "own-tokens":  # each micro-batch's own mean, not divided
                loss = per_token.sum() / m.sum()
            elif normalise == "own-tokens-over-n-twice":
                loss = per_token.sum() / m.sum() / micro / micro
            else:
                raise ValueError(normalise)
            loss.backward()
        opt.step()


def check(normalise: str, uneven: bool = True) -> None:
    loopcheck.assert_equivalent_updates(
        lambda: train(1, normalise, uneven), lambda: train(MICRO, normalise, uneven)
    )


def test_sum_over_tokens_divided_by_the_whole_batch_count_passes():
    check("whole-batch-tokens")


def test_equal_sized_means_divided_by_n_pass():
    check("own-tokens-over-n", uneven=False)


def test_per_micro_batch_token_means_with_uneven_padding_are_caught():
    with pytest.raises(AssertionError, match="LC206") as excinfo:
        check("own-tokens-over-n")
    message = str(excinfo.value)
    assert "per-micro-batch normalisation" in message
    assert excinfo.value.finding.code == "LC206"
    assert "embed.weight" in message or "head.weight" in message  # named parameters


def test_an_undivided_loss_is_n_times_too_large():
    with pytest.raises(AssertionError, match="LC206") as excinfo:
        check("own-tokens", uneven=False)
    message = str(excinfo.value)
    assert "about the number of micro-batches (4)" in message and "LC201" in message
    assert "4 backward pass(es) before the first step, against 1" in message


def test_a_loss_divided_twice_is_n_times_too_small():
    with pytest.raises(AssertionError, match="about 1/4"):
        check("own-tokens-over-n-twice", uneven=False)


def test_both_runs_must_start_from_the_same_parameters():
    shared = TinyLM()

    def run():
        opt = torch.optim.SGD(shared.parameters(), lr=0.1)
        inputs, targets, _ = batch(False)
        opt.zero_grad()
        token_losses(shared, inputs, targets).mean().backward()
        opt.step()

    def moved():
        with torch.no_grad():
            shared.head.bias.add_(1.0)
        run()

    loopcheck.assert_equivalent_updates(run, run)  # the first step of each run is stopped
    with pytest.raises(AssertionError, match=r"start from different parameters \(head.bias"):
        loopcheck.assert_equivalent_updates(run, moved)


def test_a_run_with_no_step_is_a_clear_error():
    with pytest.raises(AssertionError, match="ran no optimizer step"):
        loopcheck.assert_equivalent_updates(lambda: None, lambda: train(MICRO, "own-tokens"))
