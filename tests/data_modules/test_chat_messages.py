"""Your own chat data: ChatMessages on a no_robots-style folder (prompt, prompt_id, messages, category; splits train
and test; system turns), trained through the CLI with no code."""

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch

from data_modules import ChatMessages, UltraChat200k
from data_modules.windows import LazyArray
from lightning_gpt.chat import ASSISTANT, END_OF_TURN
from lightning_gpt.cli import run
from lightning_gpt.model import IGNORE_INDEX
from tests.conftest import synthetic_conversations, write_hub_folder

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def no_robots_rows(n: int, seed: int) -> list[dict]:
    rows = synthetic_conversations(n, seed=seed, system=True)
    for i, row in enumerate(rows):
        row["category"] = ("Brainstorm", "Chat", "Rewrite")[i % 3]
        if i % 2:  # no_robots has system turns in some conversations only
            row["messages"] = row["messages"][1:]
    return rows


@pytest.mark.slow
def test_no_robots_style_data_trains_through_the_cli_with_loss_on_assistant_tokens_only(tmp_path, monkeypatch):
    folder = write_hub_folder(
        tmp_path / "no_robots", {"train": no_robots_rows(60, 1), "test": no_robots_rows(12, 2)}, config="default"
    )
    monkeypatch.chdir(tmp_path)
    cli = run(
        [
            *("fit", "-c", str(CONFIGS / "sft_ultrachat.yaml"), "-c", str(CONFIGS / "smoke.yaml")),
            *("--data.class_path", "data_modules.ChatMessages", "--data.path", str(folder)),
            *("--data.train_split", "train", "--data.test_split", "test", "--trainer.max_steps", "3"),
            *("--trainer.val_check_interval", "3", "--trainer.limit_val_batches", "2"),
        ]
    )
    dm = cli.datamodule
    assert type(dm) is ChatMessages and dm.splits == {"train": "train", "val": "train", "test": "test"}
    assert cli.trainer.global_step == 3 and np.isfinite(cli.trainer.callback_metrics["val_loss"].item())
    # Scored targets: only what follows <|assistant|> up to and including <|end|>; system and user turns never.
    batch = next(iter(dm.train_dataloader()))
    x, y = batch.inputs, batch.targets
    assistant, end = dm.tokenizer.token_id(ASSISTANT), dm.tokenizer.token_id(END_OF_TURN)
    system = dm.tokenizer.token_id("<|system|>")
    assert (x == system).any()  # system turns made it in
    for inputs, targets in zip(x.tolist(), y.tolist(), strict=True):
        in_reply = False
        for token, target in zip(inputs, targets, strict=True):
            # padding (end-of-text, as the start of each conversation) ends a reply too
            in_reply = token == assistant or (in_reply and token not in (end, dm.tokenizer.eot_id))
            assert (target != IGNORE_INDEX) == in_reply
    assert (y != IGNORE_INDEX).any()
    assert (y == end).any()  # the end-of-turn after a reply is scored


def test_ultrachat_is_the_generic_module_with_its_own_defaults(ultrachat_dir, tmp_path):
    dm = UltraChat200k(num_workers=0)
    assert dm.path == "HuggingFaceH4/ultrachat_200k"
    assert dm.splits == {"train": "train_sft", "val": "train_sft", "test": "test_sft"} and dm.holds_out
    # The generic module (not its subclass: each DataModule stands on TokenDataModule): the same settings, and on the
    # same data the same cached conversations and the same batches.
    assert set(inspect.signature(UltraChat200k).parameters) == set(inspect.signature(ChatMessages).parameters)
    args = {"path": str(ultrachat_dir), "block_size": 64, "batch_size": 4, "num_workers": 0, "cache_dir": str(tmp_path)}
    ours, generic = UltraChat200k(**args), ChatMessages(**args, train_split="train_sft", test_split="test_sft")
    for data in (ours, generic):
        data.setup("fit")
    for role in ("train", "val"):
        for name in ("tokens", "mask", "lengths"):
            cached = [LazyArray(*data._cache(role), name).values for data in (ours, generic)]
            assert len(cached[0]) and np.array_equal(*cached)
    a, b = next(iter(ours.train_dataloader())), next(iter(generic.train_dataloader()))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert torch.equal(a.step_count, b.step_count) and a.real_tokens == b.real_tokens
