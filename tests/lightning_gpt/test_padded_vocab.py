"""The vocabulary's padding rows (a multiple of 64 for fast matmuls) take no probability mass: not in the chunked
training loss, not in the logits every evaluation, DPO and sampling read (the logged loss equals the exported model's:
tests/lightning_gpt/commands/test_export.py)."""

import pytest
import torch
import torch.nn.functional as F

from lightning_gpt.chunked_loss import chunked_cross_entropy_sum
from lightning_gpt.model import GPT, IGNORE_INDEX, GPTConfig


def test_the_chunked_loss_leaves_the_padding_rows_out_of_the_softmax():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(19, 8, generator=g, requires_grad=True)
    weight = torch.randn(64, 8, generator=g, requires_grad=True)  # 50 real rows, 14 of padding
    weight.data[50:] += 3.0  # padding rows that would take much of the mass if they were in the softmax
    targets = torch.randint(0, 50, (19,), generator=g)
    targets[::4] = IGNORE_INDEX
    expected = F.cross_entropy((hidden @ weight.T)[:, :50], targets, ignore_index=IGNORE_INDEX, reduction="sum")
    expected_grads = torch.autograd.grad(expected, (hidden, weight))
    got = chunked_cross_entropy_sum(hidden, weight, targets, IGNORE_INDEX, chunk_rows=8, vocab_size=50)
    grads = torch.autograd.grad(got, (hidden, weight))
    torch.testing.assert_close(got, expected)
    for g_got, g_expected in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g_got, g_expected)
    assert grads[1][50:].abs().max() == 0  # padding rows learn nothing
    with torch.no_grad():  # the evaluation path, chunked without gradients
        torch.testing.assert_close(chunked_cross_entropy_sum(hidden, weight, targets, IGNORE_INDEX, 8, 50), expected)


@pytest.mark.parametrize("with_logits", [True, False])
def test_the_model_loss_is_a_softmax_over_the_real_vocabulary(with_logits):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=70, block_size=16, n_layer=1, n_head=2, n_embd=32))
    assert model.config.padded_vocab_size == 128
    with torch.no_grad():
        model.tok_emb.weight[70:] = 5.0  # padding rows aligned with everything: large logits if not dropped
    x, y = torch.randint(0, 70, (2, 16)), torch.randint(0, 70, (2, 16))
    hidden = model.hidden_states(x)  # (B, T, C)
    by_hand = -torch.log_softmax(hidden @ model.tok_emb.weight[:70].T, dim=-1).gather(-1, y[..., None]).sum()
    if with_logits:
        logits = model.logits(x)
        assert logits.shape == (2, 16, 70)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum")
    else:
        loss = model(x, y)
    torch.testing.assert_close(loss, by_hand)
