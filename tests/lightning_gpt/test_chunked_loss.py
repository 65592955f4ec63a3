"""The chunked cross-entropy of the LM head: the same loss and gradients as the whole-logits computation."""

import pytest
import torch
import torch.nn.functional as F

from lightning_gpt.chunked_loss import chunked_cross_entropy_sum
from lightning_gpt.model import GPT, IGNORE_INDEX, GPTConfig


def _problem(n=37, c=16, v=70, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, c, generator=g, requires_grad=True)
    weight = torch.randn(v, c, generator=g, requires_grad=True)
    targets = torch.randint(0, v, (n,), generator=g)
    targets[::5] = IGNORE_INDEX
    return hidden, weight, targets


@pytest.mark.parametrize("chunk_rows", [1, 8, 37, 100])
def test_loss_and_gradients_equal_the_whole_logits(chunk_rows):
    hidden, weight, targets = _problem()
    expected = F.cross_entropy((hidden @ weight.T).float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")
    expected_grads = torch.autograd.grad(2.5 * expected, (hidden, weight))
    got = chunked_cross_entropy_sum(hidden, weight, targets, IGNORE_INDEX, chunk_rows=chunk_rows)
    grads = torch.autograd.grad(2.5 * got, (hidden, weight))  # the upstream gradient scales both
    torch.testing.assert_close(got, expected)
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e)


def test_ignored_rows_get_no_gradient():
    hidden, weight, targets = _problem()
    targets[:10] = IGNORE_INDEX
    loss = chunked_cross_entropy_sum(hidden, weight, targets, IGNORE_INDEX, chunk_rows=8)
    (grad_hidden,) = torch.autograd.grad(loss, (hidden,))
    assert grad_hidden[:10].abs().max() == 0 and grad_hidden[10:].abs().max() > 0


def test_without_grad_it_gives_the_same_loss():
    hidden, weight, targets = _problem()
    with torch.no_grad():
        expected = F.cross_entropy(hidden @ weight.T, targets, ignore_index=IGNORE_INDEX, reduction="sum")
        got = chunked_cross_entropy_sum(hidden, weight, targets, IGNORE_INDEX, chunk_rows=8)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("autocast", [False, True])
def test_the_model_trains_the_same_with_chunks(autocast):
    """GPT(x, y), the training loss over chunks, against the whole logits: loss and every parameter's gradient
    (the tied embedding included), in float32 and under bf16 autocast as the real configs train."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=101, block_size=16, n_layer=2, n_head=2, n_embd=32))
    x, y = torch.randint(0, 101, (3, 16)), torch.randint(0, 101, (3, 16))
    y[0, :5] = IGNORE_INDEX

    def loss_and_grads(with_logits):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            if with_logits:
                loss = F.cross_entropy(model.logits(x).flatten(0, 1).float(), y.flatten(), reduction="sum")
            else:
                loss = model(x, y)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    whole_loss, whole = loss_and_grads(True)
    chunked_loss, chunked = loss_and_grads(False)
    tolerance = {"rtol": 2e-2, "atol": 2e-3} if autocast else {}
    torch.testing.assert_close(chunked_loss, whole_loss, **tolerance)
    for name in whole:
        torch.testing.assert_close(chunked[name], whole[name], **tolerance, msg=name)
