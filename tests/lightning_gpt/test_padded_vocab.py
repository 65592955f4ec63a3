"""The vocabulary's padding rows (a multiple of 64 for fast matmuls) take no probability mass: not in the chunked
training loss, not in the logits every evaluation, DPO and sampling read, so the logged loss is the exported model's."""

import os

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


@pytest.mark.slow
def test_the_logged_test_loss_equals_the_exported_models_loss(wikitext_dir, tmp_path, monkeypatch):
    """`lightning-gpt test` against a transformers model loaded from `lightning-gpt export`, token by token on the
    same test windows."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    from data_modules import WikiText103
    from lightning_gpt.cli import run
    from lightning_gpt.commands.export_model import export
    from tests.conftest import REPO

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    base = ["-c", str(REPO / "configs" / "pretrain_wikitext103.yaml"), "-c", str(REPO / "configs" / "smoke.yaml")]
    base += ["--data.path", str(wikitext_dir), "--trainer.limit_test_batches", "null"]
    run(["fit", *base, "--trainer.max_steps", "2", "--trainer.val_check_interval", "2"])
    ckpt = tmp_path / "runs" / "pretrain_wikitext103" / "smoke" / "checkpoints" / "last.ckpt"
    ours = float(run(["test", *base, "--ckpt_path", str(ckpt)]).trainer.callback_metrics["test_loss"])

    folder = export(str(ckpt), str(tmp_path / "hf"))
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    dm = WikiText103(path=str(wikitext_dir), block_size=128, eval_batch_size=16, num_workers=0)
    dm.setup("test")
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in ((b.inputs, b.targets) for b in dm.test_dataloader()):
            logits = model(x).logits.double()  # (B, T, vocab): no padding rows there
            total += float(
                F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
            )
            count += int((y != IGNORE_INDEX).sum())
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert abs(ours - total / count) < 1e-6
