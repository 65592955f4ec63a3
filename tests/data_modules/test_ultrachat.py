"""Chat fine-tuning: the UltraChat DataModule, init_from a pretraining checkpoint, metrics and resume."""

import json
import logging

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from data_modules import WikiText103
from data_modules.token_cache import meta_path
from data_modules.ultrachat import length_grouped_batches, padding_waste
from lightning_gpt.chat import chat_tokenizer, render_conversation
from lightning_gpt.checkpoint import load_pretrained
from lightning_gpt.errors import UserInputError
from lightning_gpt.model import IGNORE_INDEX
from lightning_gpt.training.language_model import GPTModule
from tests.conftest import (
    LossRecorder,
    StopAt,
    chat_data,
    synthetic_conversations,
    tiny_module,
    trainer,
    wikitext_folder,
    write_hub_folder,
)


def test_batches_train_only_on_assistant_tokens(ultrachat_dir):
    dm = chat_data(ultrachat_dir)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    x, y, step_targets, real_tokens = batch.inputs, batch.targets, batch.step_count, batch.real_tokens
    assert x.shape == y.shape and x.shape[0] == 8
    assert step_targets == (y != IGNORE_INDEX).sum()  # one device, no accumulation: the step is this batch
    tok = dm.tokenizer
    real_in_rows = 0
    for row_x, row_y in zip(x, y, strict=True):
        kept = row_y[row_y != IGNORE_INDEX].tolist()
        assert kept and kept[-1] == tok.token_id("<|end|>")
        assert tok.token_id("<|user|>") not in kept and tok.token_id("<|assistant|>") not in kept
        real = int((row_x != tok.eot_id).sum()) + 1  # positions before padding (one leading end-of-text)
        assert torch.equal(
            row_x[1:real][row_y[: real - 1] != IGNORE_INDEX], row_y[: real - 1][row_y[: real - 1] != IGNORE_INDEX]
        )
        real_in_rows += real
    # Throughput and MFU count real tokens only: a host-side int, the padding left out.
    assert isinstance(real_tokens, int) and real_tokens == real_in_rows < x.numel()


def test_targets_match_the_renderer(ultrachat_dir):
    dm = chat_data(ultrachat_dir)
    dm.setup("test")
    rows = synthetic_conversations(24, seed=2)
    rendered = {}
    for row in rows:
        ids, mask = render_conversation(dm.tokenizer, row["messages"])
        rendered[tuple(ids[:-1])] = [t if m else IGNORE_INDEX for t, m in zip(ids[1:], mask[1:], strict=True)]
    seen = 0
    for x, y in ((b.inputs, b.targets) for b in dm.test_dataloader()):
        for row_x, row_y in zip(x, y, strict=True):
            n = int((row_y != IGNORE_INDEX).nonzero().max()) + 1
            assert rendered[tuple(row_x[:n].tolist())] == row_y[:n].tolist()
            seen += 1
    assert seen == 24  # every test conversation, once


def test_a_conversation_gives_the_same_logits_padded_in_a_batch_as_alone(ultrachat_dir):
    dm = chat_data(ultrachat_dir)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    x, y = batch.inputs, batch.targets
    module = GPTModule(preset="tiny", vocab_size=dm.vocab_size, block_size=64, n_layer=2).eval()
    shortest = int(x.shape[0] - 1)
    n = int((y[shortest] != IGNORE_INDEX).nonzero().max()) + 1
    with torch.no_grad():
        batched_logits = module.model.logits(x)
        alone_logits = module.model.logits(x[shortest : shortest + 1, :n])
    assert n < x.shape[1]  # the row really is padded
    torch.testing.assert_close(batched_logits[shortest, :n], alone_logits[0], atol=1e-5, rtol=1e-5)


def test_length_grouping_keeps_padding_small():
    lengths = np.random.default_rng(0).integers(20, 1000, size=4096)
    grouped = length_grouped_batches(lengths, 16, seed=1)
    random_batches = length_grouped_batches(lengths, 16, seed=1, group=1)
    assert padding_waste(lengths, grouped) < 0.05 < 0.2 < padding_waste(lengths, random_batches)
    assert sorted(np.concatenate(grouped).tolist()) == list(range(4096))


def test_bad_rows_are_skipped_counted_and_shown_once(tmp_path, caplog):
    good = synthetic_conversations(40, seed=1)
    bad = [
        {"prompt": "p", "prompt_id": "b0", "messages": [{"role": "bot", "content": "x"}]},
        {
            "prompt": "p",
            "prompt_id": "b1",
            "messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "y"}],
        },
        {"prompt": "p", "prompt_id": "b2", "messages": [{"role": "user", "content": "only a question"}]},
    ]
    folder = write_hub_folder(tmp_path / "chat", {"train_sft": good + bad, "test_sft": good[:8]}, config="default")
    dm = chat_data(folder, val_split="test_sft")  # every train_sft row in the training cache
    with caplog.at_level(logging.WARNING):
        dm.prepare_data()
    stats = json.loads(meta_path(dm.cache_base("train_sft")).read_text())["stats"]
    assert stats["rows"] == 43 and stats["skipped"] == 3 and stats["samples"] == 40
    assert set(stats["skip_reasons"]) == {"unknown role 'bot'", "empty content", "no assistant turn"}
    assert sum("skipped 3 of 43 malformed rows" in r.message for r in caplog.records) == 1


def test_mostly_bad_rows_fail_with_a_clear_error(tmp_path):
    rows = [{"prompt": "p", "prompt_id": str(i), "messages": [{"role": "human", "content": "hi"}]} for i in range(10)]
    folder = write_hub_folder(tmp_path / "chat", {"train_sft": rows, "test_sft": rows}, config="default")
    with pytest.raises(UserInputError, match=r"10 of 10 rows are malformed.*messages_column"):
        chat_data(folder, val_split="test_sft").prepare_data()
    assert not list((tmp_path / "chat").glob("*.bin"))


def test_long_conversations_are_split_and_counted(tmp_path):
    rows = synthetic_conversations(30, seed=3, turns=6, system=True)
    folder = write_hub_folder(tmp_path / "chat", {"train_sft": rows, "test_sft": rows[:5]}, config="default")
    dm = chat_data(folder, block_size=48, val_split="test_sft")
    dm.prepare_data()
    stats = json.loads(meta_path(dm.cache_base("train_sft")).read_text())["stats"]
    assert stats["split_conversations"] == 30 and stats["samples"] > 30


@pytest.fixture(scope="module")
def pretrain_ckpt(tmp_path_factory) -> str:
    """A real pretraining checkpoint: a tiny model fitted for 30 steps on the WikiText-like corpus."""
    root = tmp_path_factory.mktemp("pretrain")
    folder = wikitext_folder(root / "wikitext")
    dm = WikiText103(path=str(folder), block_size=64, batch_size=4, num_workers=0, cache_dir=str(root / "cache"))
    run = trainer(root, 30)
    run.fit(tiny_module(dm), dm)
    run.save_checkpoint(root / "pretrain.ckpt")
    return str(root / "pretrain.ckpt")


def test_init_from_loads_pretrained_weights_and_adds_chat_token_rows(pretrain_ckpt):
    pretrained = GPTModule.load_from_checkpoint(pretrain_ckpt).model.state_dict()
    module = GPTModule(preset="tiny", vocab_size=chat_tokenizer().vocab_size, block_size=64, n_layer=1, n_embd=32)
    load_pretrained(module.model, pretrain_ckpt)
    loaded = module.model.state_dict()
    for name, weight in pretrained.items():
        if name not in ("tok_emb.weight", "lm_head.weight"):
            assert torch.equal(loaded[name], weight), name
    emb, old = loaded["tok_emb.weight"], pretrained["tok_emb.weight"]
    assert torch.equal(emb[:50257], old[:50257])
    torch.testing.assert_close(emb[50257:50261], old[:50257].mean(0).expand(4, -1))
    assert module.model.lm_head.weight is module.model.tok_emb.weight  # still tied


def test_init_from_fit_trains_from_the_pretrained_weights(pretrain_ckpt, ultrachat_dir, tmp_path):
    ckpt = pretrain_ckpt
    dm = chat_data(ultrachat_dir)
    scratch = trainer(tmp_path / "a", 1, limit_val_batches=None).validate(tiny_module(dm), dm, verbose=False)[0]
    recorder = LossRecorder()
    run = trainer(tmp_path / "b", 4, [recorder], limit_val_batches=None, val_check_interval=4)
    run.fit(tiny_module(dm, init_from=ckpt, learning_rate=1e-3), dm)
    first_loss = recorder.losses[0]
    assert first_loss < scratch["val_loss"] - 1.0  # starts from what pretraining learned, not from noise


def test_init_from_a_checkpoint_of_another_shape_is_refused(pretrain_ckpt, ultrachat_dir, tmp_path):
    ckpt = pretrain_ckpt
    dm = chat_data(ultrachat_dir)
    with pytest.raises(UserInputError, match=r"init_from .* another shape.*n_embd"):
        trainer(tmp_path / "b", 1).fit(tiny_module(dm, init_from=ckpt, n_embd=64), dm)


def test_init_from_a_missing_file_is_named(ultrachat_dir, tmp_path):
    dm = chat_data(ultrachat_dir)
    with pytest.raises(
        UserInputError, match=r"--model.init_from .*nope.ckpt is not a readable lightning-gpt checkpoint: no such file"
    ):
        trainer(tmp_path, 1).fit(tiny_module(dm, init_from=str(tmp_path / "nope.ckpt")), dm)


def test_sft_resume_continues_exactly(ultrachat_dir, tmp_path):
    def fresh():
        L.seed_everything(0)
        return chat_data(ultrachat_dir)

    straight = LossRecorder()
    dm = fresh()
    trainer(tmp_path / "a", 20, [straight]).fit(tiny_module(dm), dm)
    assert 10 < dm.trainer.num_training_batches < 20  # the run crosses an epoch boundary

    first, second = LossRecorder(), LossRecorder()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=7)
    dm = fresh()
    trainer(tmp_path / "b", 20, [first, StopAt(7), ckpt], enable_checkpointing=True).fit(tiny_module(dm), dm)
    dm = fresh()
    trainer(tmp_path / "b", 20, [second]).fit(tiny_module(dm), dm, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    torch.testing.assert_close(first.losses + second.losses, straight.losses, rtol=0, atol=1e-6)
