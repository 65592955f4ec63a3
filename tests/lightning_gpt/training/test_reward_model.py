"""The reward model: the Bradley-Terry loss, where its head reads, its real config end to end."""

import math
import random
from pathlib import Path

import pytest
import torch

from data_modules.ultrafeedback import answer_rows
from lightning_gpt.chat import chat_tokenizer
from lightning_gpt.cli import run
from lightning_gpt.loading import load_reward_model
from lightning_gpt.model import IGNORE_INDEX
from lightning_gpt.training.bradley_terry import bradley_terry
from lightning_gpt.training.language_model import GPTModule
from lightning_gpt.training.reward_model import RewardModule
from tests.conftest import REWARD, SMOKE, TINY_CHAT, pair_row, preference_folder, save_module, scalars, sentence, turn

CHAT_VOCAB = chat_tokenizer().vocab_size


def test_bradley_terry_is_the_hand_computation():
    losses, correct = bradley_terry(torch.tensor([2.0, 0.0, -1.0]), torch.tensor([1.0, 0.0, 1.0]))
    hand = [math.log(1 + math.exp(-1)), math.log(2), math.log(1 + math.exp(2))]  # -log sigmoid(margin)
    torch.testing.assert_close(losses, torch.tensor(hand))
    assert correct.tolist() == [1.0, 0.0, 0.0]  # a tie ranks nothing right


def test_the_head_reads_the_last_scored_position():
    torch.manual_seed(0)
    module = RewardModule(**TINY_CHAT).eval()
    prompt, answer = [50256, 10, 11, 12, 50259], [20, 21, 22, 50260]  # <|endoftext|> ... <|assistant|>; ... <|end|>
    x, y = answer_rows([(prompt, answer), (prompt, answer[:2])], pad_id=50256)  # row 1 is shorter: padded
    last = [int((row != IGNORE_INDEX).nonzero().max()) for row in y]
    assert last == [7, 5]  # x there: the token before the answer's last one
    rewards = module.rewards(x, y)
    alone = module.rewards(*answer_rows([(prompt, answer[:2])], pad_id=50256))
    torch.testing.assert_close(rewards[1:], alone)  # the padding after it changes nothing

    after, before = x.clone(), x.clone()
    after[1, last[1] + 1] = 99  # a token after the scored position
    before[0, last[0]] = 99  # the answer's last token that the head reads
    same, changed = module.rewards(after, y), module.rewards(before, y)
    assert same[1] == rewards[1]
    assert changed[0] != rewards[0] and changed[1] == rewards[1]


def easy_preferences(n: int, seed: int) -> list[dict]:
    """Pairs that one word tells apart: every chosen answer says "Splendid", no rejected one does."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        prompt = [turn("user", sentence(rng, rng.randint(3, 6)))]
        chosen, rejected = f"{sentence(rng, rng.randint(2, 5))} Splendid!", sentence(rng, rng.randint(3, 6))
        rows.append(pair_row(f"{seed}-{i}", prompt, chosen, rejected))
    return rows


@pytest.fixture
def sft_ckpt(tmp_path) -> str:
    """A chat model's checkpoint in the smoke overlay's shape (tiny, block 128, the chat vocabulary)."""
    return save_module(GPTModule(preset="tiny", vocab_size=CHAT_VOCAB, block_size=128), tmp_path / "sft.ckpt")


@pytest.mark.slow
def test_the_reward_config_learns_easy_preferences_and_tests_on_test_prefs(sft_ckpt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = preference_folder(tmp_path / "prefs", easy_preferences(80, seed=1), easy_preferences(16, seed=2))
    # The real config under the smoke overlay, with the real kind of accumulation and data workers, smaller.
    args = ["-c", REWARD, "-c", SMOKE, "--data.path", str(data), "--model.init_from", sft_ckpt,
            "--trainer.accumulate_grad_batches", "2", "--data.num_workers", "1", "--data.batch_size", "4",
            "--data.val_fraction", "0.15", "--trainer.max_epochs", "2", "--trainer.max_steps", "10",
            "--trainer.val_check_interval", "10", "--trainer.log_every_n_steps", "1"]  # fmt: skip
    cli = run(["fit", *args])
    assert isinstance(cli.model, RewardModule) and cli.trainer.global_step == 10
    assert cli.trainer.accumulate_grad_batches == 2
    metrics = cli.trainer.callback_metrics
    assert {"val_loss", "val_accuracy", "train_eval_loss", "train_val_gap"} <= set(metrics)
    assert metrics["val_accuracy"] >= 0.9
    run_dir = tmp_path / "runs" / "reward_ultrafeedback" / "smoke"
    losses, accuracy = scalars(run_dir, "train_loss"), scalars(run_dir, "train_accuracy")
    assert sorted(losses) == list(range(10)) and scalars(run_dir, "train_rewards/margins").keys() == losses.keys()
    early, late = (sum(losses[s] for s in steps) / 3 for steps in (range(3), range(7, 10)))
    assert late < early - 0.3
    assert sum(accuracy[s] for s in range(7, 10)) > sum(accuracy[s] for s in range(3))

    best = cli.trainer.checkpoint_callback.best_model_path
    assert "val_accuracy" in Path(best).name
    tested = run(["test", *args, "--ckpt_path", best])
    assert tested.trainer.callback_metrics["test_accuracy"] >= 0.9
    assert "test_loss" in tested.trainer.callback_metrics

    module, tokenizer = load_reward_model(best, "cpu")
    assert not module.training and tokenizer.vocab_size == CHAT_VOCAB
    saved = torch.load(best, weights_only=True)["state_dict"]["score_head.weight"]
    assert torch.equal(module.score_head.weight, saved)
