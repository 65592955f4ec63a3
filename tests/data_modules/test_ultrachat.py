"""The UltraChat DataModule (data_modules/ultrachat.py): loss on assistant tokens only, batches that match the
renderer, little padding, and malformed or long conversations skipped, split and counted."""

import json
import logging

import numpy as np
import pytest
import torch

from data_modules.token_cache import meta_path
from data_modules.ultrachat import length_grouped_batches, padding_waste
from lightning_gpt.chat import render_conversation
from lightning_gpt.errors import UserInputError
from lightning_gpt.model import IGNORE_INDEX
from lightning_gpt.training.language_model import GPTModule
from tests.conftest import (
    chat_data,
    synthetic_conversations,
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
