"""`--model.init_from` starts every stage's model, in `validate` and `test` as in `fit`: evaluating the starting
model on a new stage's data scores that model, not random weights."""

import math

import pytest
import torch

from lightning_gpt.chat import chat_tokenizer
from lightning_gpt.cli import run
from lightning_gpt.tokenizer import train_tokenizer
from lightning_gpt.training.language_model import GPTModule
from tests.conftest import (
    DPO,
    SFT,
    SMOKE,
    bpe_tokenizer_checkpoint,
    conversation_texts,
    preference_folder,
    preference_rows,
    save_module,
)


def metrics(cli) -> dict[str, float]:
    return {name: float(value) for name, value in cli.trainer.callback_metrics.items()}


@pytest.mark.slow
def test_dpo_validate_before_training_scores_a_policy_equal_to_its_reference(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    rows = preference_rows(48, seed=3)
    prefs = preference_folder(tmp_path / "prefs", rows)
    # An SFT checkpoint with a 300-token BPE and the chat tokens (GPT-2's 50k-row head made this test 17 s).
    texts = [message["content"] for row in rows for message in row["chosen"] + row["rejected"]]
    bpe = chat_tokenizer(train_tokenizer("bpe-300", texts))
    sft = save_module(GPTModule(preset="tiny", block_size=128, vocab_size=bpe.vocab_size), "sft.ckpt", bpe)
    args = ["-c", DPO, "-c", SMOKE, "--data.path", str(prefs), "--data.val_fraction", "0.25", "--model.init_from", sft]
    for command in ("validate", "test"):
        got = metrics(run([command, *args]))
        stage = "val" if command == "validate" else "test"
        assert got[f"{stage}_loss"] == pytest.approx(math.log(2), abs=1e-4)
        assert got[f"{stage}_rewards/margins"] == pytest.approx(0.0, abs=1e-6)
        assert got[f"{stage}_rewards/accuracies"] == 0.0  # no pair is won while the rewards are equal
        assert got[f"{stage}_kl"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.slow
def test_sft_validate_with_init_from_equals_validate_with_ckpt_path(ultrachat_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = ["-c", SFT, "-c", SMOKE, "--data.path", str(ultrachat_dir), "--data.val_fraction", "0.1"]
    base += ["--data.tokenizer", bpe_tokenizer_checkpoint(conversation_texts(ultrachat_dir), tmp_path / "bpe.ckpt")]
    run(["fit", *base, "--trainer.max_steps", "3", "--trainer.val_check_interval", "3", "--trainer.limit_val_batches",
         "1"])  # fmt: skip
    ckpt = str(tmp_path / "runs" / "sft_ultrachat" / "smoke" / "checkpoints" / "last.ckpt")
    for command in ("validate", "test"):
        from_init = metrics(run([command, *base, "--model.init_from", ckpt]))
        from_ckpt = metrics(run([command, *base, "--ckpt_path", ckpt]))
        assert from_init.keys() == from_ckpt.keys() and from_init
        for name, value in from_ckpt.items():
            assert from_init[name] == pytest.approx(value, rel=1e-6), name
