"""DPO (lightning_gpt/training/dpo.py): what is scored, the reference (live or computed ahead), accumulation, the
real config with the smoke overlay, and exact resumes (of the reward model too)."""

import logging
import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_gpt.batch import Batch
from lightning_gpt.chat import chat_tokenizer
from lightning_gpt.cli import run
from lightning_gpt.errors import UserInputError
from lightning_gpt.loading import load_checkpoint
from lightning_gpt.model import IGNORE_INDEX
from lightning_gpt.tokenizer import train_tokenizer
from lightning_gpt.training.dpo import DPOModule
from lightning_gpt.training.language_model import GPTModule
from lightning_gpt.training.preference_losses import answer_logps, answer_positions, initial_loss
from lightning_gpt.training.reward_model import RewardModule
from tests.conftest import (
    DPO,
    SMOKE,
    LossRecorder,
    StopAt,
    pref_data,
    preference_folder,
    preference_rows,
    save_module,
    scalars,
    trainer,
)

SHAPE = {"preset": "tiny", "n_layer": 1, "n_embd": 32, "block_size": 64}


def sft_checkpoint(path, seed: int = 0, tokenizer=None, **shape) -> str:
    """A chat model's checkpoint as `fit` writes it (weights and hyperparameters), with random weights; GPT-2's
    chat vocabulary, or `tokenizer`'s (then stored in it, as fit stores a trained one)."""
    torch.manual_seed(seed)
    module = GPTModule(**{**SHAPE, **shape, "vocab_size": (tokenizer or chat_tokenizer()).vocab_size})
    return save_module(module, path, tokenizer)


def dpo_module(init_from: str, **overrides) -> DPOModule:
    args = {**SHAPE, "vocab_size": chat_tokenizer().vocab_size, "learning_rate": 1e-2, "warmup_steps": 2}
    module = DPOModule(init_from=init_from, **{**args, **overrides})
    module.model.load_state_dict(module.reference_model().state_dict())  # what on_fit_start does in a fresh run
    return module


@pytest.fixture
def pairs_dir(tmp_path):
    return preference_folder(tmp_path / "prefs", preference_rows(64, seed=3))


def first_batch(dm):
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


def test_prompt_tokens_are_never_scored(pairs_dir):
    dm = pref_data(pairs_dir)
    batch = first_batch(dm)
    y, pair_ids = batch.targets, batch.pair_ids
    dataset = dm.train_dataset(*dm._cache("train"))[0]
    half = len(pair_ids)
    select, targets, rows = answer_positions(y)
    for row in range(2 * half):
        prompt, chosen, rejected = dataset.pair(int(pair_ids[row % half]))
        answer = chosen if row < half else rejected
        scored = select[row].nonzero()[:, 0]
        # Exactly the positions that predict an answer token (the <|end|> included), and the answer's ids there.
        assert scored.tolist() == list(range(len(prompt) - 1, len(prompt) + len(answer) - 1))
        assert targets[rows == row].tolist() == answer.tolist()


def test_at_the_start_the_loss_is_ln2_the_rewards_zero_and_no_pair_counts_as_won(pairs_dir, tmp_path):
    dm = pref_data(pairs_dir)
    batch = first_batch(dm)
    x, y = batch.inputs, batch.targets
    init = sft_checkpoint(tmp_path / "sft.ckpt")
    for loss_type, smoothing in (("sigmoid", 0.0), ("sigmoid", 0.2), ("ipo", 0.0)):
        module = dpo_module(init, beta=0.25, loss_type=loss_type, label_smoothing=smoothing).eval()
        terms, _, (entropy, kl, tokens) = module.pair_terms(x, y)
        expected = initial_loss(0.25, loss_type)
        assert expected == (math.log(2) if loss_type == "sigmoid" else 4.0)
        torch.testing.assert_close(terms.losses, torch.full_like(terms.losses, expected))
        assert not terms.chosen_rewards.any() and not terms.rejected_rewards.any()
        # rewards/accuracies counts pairs whose chosen reward is strictly larger: none while they are equal.
        assert not (terms.chosen_rewards > terms.rejected_rewards).any()
        assert abs(float(kl)) < 1e-5 and float(entropy) > 0 and tokens == (y[: len(y) // 2] != IGNORE_INDEX).sum()


def test_one_joint_pass_gives_the_log_probabilities_of_each_sequence_alone(pairs_dir, tmp_path):
    dm = pref_data(pairs_dir)
    batch = first_batch(dm)
    x, y = batch.inputs, batch.targets
    module = dpo_module(sft_checkpoint(tmp_path / "sft.ckpt")).eval()
    _, joint, _ = module.pair_terms(x, y)
    alone = []
    for row in range(len(x)):  # each sequence by itself, without the padding of the batch
        length = int((y[row] != IGNORE_INDEX).nonzero().max()) + 1
        xr, yr = x[row : row + 1, :length], y[row : row + 1, :length]
        select, targets, rows = answer_positions(yr)
        alone.append(answer_logps(module.model.logits(xr, select=select), targets, rows, 1)[0][0])
    torch.testing.assert_close(joint, torch.stack(alone), rtol=0, atol=2e-5)


def test_precomputed_reference_log_probabilities_give_the_live_losses(pairs_dir, tmp_path):
    init = sft_checkpoint(tmp_path / "sft.ckpt")
    losses = {}
    for precompute in (False, True):
        L.seed_everything(0)
        dm = pref_data(pairs_dir, batch_size=4)
        recorder = LossRecorder()
        module = DPOModule(
            **SHAPE, vocab_size=dm.vocab_size, init_from=init, learning_rate=1e-2, warmup_steps=2,
            precompute_reference=precompute,
        )  # fmt: skip
        trainer(tmp_path / str(precompute), 6, [recorder], accumulate_grad_batches=2).fit(module, dm)
        losses[precompute] = recorder.losses
        if precompute:  # the stored values are the live reference's on each training pair
            dataset = dm.trainer.train_dataloader.dataset
            x, y = dataset[0].inputs, dataset[0].targets
            select, targets, rows = answer_positions(y)
            live, _ = answer_logps(module.reference_model().logits(x, select=select), targets, rows, len(x))
            torch.testing.assert_close(module._reference_logps[dataset.batches[0]].T.flatten(), live)
    assert len(losses[True]) == 12 and losses[False][0] != losses[False][-1]
    torch.testing.assert_close(losses[True], losses[False], rtol=0, atol=1e-6)


@pytest.mark.parametrize("stage", ["dpo", "reward"])
@pytest.mark.slow
def test_resume_continues_exactly_with_accumulation_and_workers(stage, pairs_dir, tmp_path):
    """DPO (with the reference log-probabilities computed ahead, kept in the checkpoint) and the reward model."""
    init = sft_checkpoint(tmp_path / "sft.ckpt")
    settings = {"accumulate_grad_batches": 2, "limit_val_batches": 2, "val_check_interval": 4}

    def fresh():
        L.seed_everything(0)
        dm = pref_data(pairs_dir, batch_size=4, num_workers=2)
        args = {**SHAPE, "vocab_size": dm.vocab_size, "init_from": init, "learning_rate": 1e-2, "warmup_steps": 2}
        module = DPOModule(**args, precompute_reference=True) if stage == "dpo" else RewardModule(**args)
        return dm, module

    straight = LossRecorder()
    dm, module = fresh()
    trainer(tmp_path / "a", 10, [straight], **settings).fit(module, dm)
    assert dm.trainer.num_training_batches < 20  # the run crosses an epoch boundary

    first, second = LossRecorder(), LossRecorder()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=4)
    dm, module = fresh()
    trainer(tmp_path / "b", 10, [first, StopAt(4), ckpt], enable_checkpointing=True, **settings).fit(module, dm)
    if stage == "dpo":
        saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
        assert saved["dpo_reference"]["logps"].shape == (len(dm.trainer.train_dataloader.dataset.prompt), 2)
        assert not any(key.startswith("reference") for key in saved["state_dict"])  # the policy alone
    dm, module = fresh()
    trainer(tmp_path / "b", 10, [second], **settings).fit(module, dm, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    torch.testing.assert_close(first.losses + second.losses, straight.losses, rtol=0, atol=1e-6)


def test_a_resume_on_other_pairs_computes_the_reference_table_again(pairs_dir, tmp_path):
    """The same number of pairs, other answers (cut shorter): the stored table must not be reused for them."""
    init = sft_checkpoint(tmp_path / "sft.ckpt")
    args = {**SHAPE, "vocab_size": chat_tokenizer().vocab_size, "init_from": init, "precompute_reference": True}
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(tmp_path, 2, [ckpt], enable_checkpointing=True).fit(DPOModule(**args), pref_data(pairs_dir, batch_size=4))
    dm = pref_data(pairs_dir, batch_size=4, max_answer_tokens=3)
    module = DPOModule(**args)
    trainer(tmp_path, 3).fit(module, dm, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    dataset = dm.trainer.train_dataloader.dataset
    assert len(module._reference_logps) == len(dataset.prompt)  # as many pairs as before: only their tokens differ
    x, y = dataset[0].inputs, dataset[0].targets
    select, targets, rows = answer_positions(y)
    live, _ = answer_logps(module.reference_model().logits(x, select=select), targets, rows, len(x))
    torch.testing.assert_close(module._reference_logps[dataset.batches[0]].T.flatten(), live)


class RealTokens(L.Callback):
    """Counts each training batch's real (not padding) input tokens from its targets alone: a row's inputs run up to
    the position that predicts its last answer token."""

    def __init__(self) -> None:
        self.count = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        y = batch.targets
        positions = torch.arange(y.shape[1]).expand_as(y)
        self.count += int((torch.where(y != IGNORE_INDEX, positions, -1).amax(dim=1) + 1).sum())


@pytest.mark.parametrize("stage", ["dpo", "reward"])
def test_tokens_seen_and_flops_count_real_tokens_not_padding(stage, pairs_dir, tmp_path):
    init = sft_checkpoint(tmp_path / "sft.ckpt")
    dm = pref_data(pairs_dir, batch_size=4)
    args = {**SHAPE, "vocab_size": dm.vocab_size, "init_from": init}
    module = DPOModule(**args) if stage == "dpo" else RewardModule(**args)
    counter = RealTokens()
    trainer(tmp_path, 3, [counter], accumulate_grad_batches=2).fit(module, dm)
    padded = 6 * 2 * 4 * 63  # what counting every position of the 6 batches would give at most
    assert 0 < counter.count < padded and module.tokens_seen == counter.count


def test_a_changed_reference_file_is_refused_on_resume(pairs_dir, tmp_path):
    init = sft_checkpoint(tmp_path / "sft.ckpt")
    dm = pref_data(pairs_dir)
    module = DPOModule(**SHAPE, vocab_size=dm.vocab_size, init_from=init)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(tmp_path, 2, [ckpt], enable_checkpointing=True).fit(module, dm)
    sft_checkpoint(tmp_path / "sft.ckpt", seed=1)  # another model at the same path
    module = DPOModule(**SHAPE, vocab_size=dm.vocab_size, init_from=init)
    with pytest.raises(UserInputError, match="--model.init_from .*sft.ckpt is not the model this run started from"):
        trainer(tmp_path, 4).fit(module, dm, ckpt_path=tmp_path / "ckpt" / "last.ckpt")


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"beta": 0.0}, "--model.beta must be positive"),
        ({"loss_type": "hinge"}, "--model.loss_type must be one of sigmoid, ipo"),
        ({"loss_type": "ipo", "label_smoothing": 0.1}, "--model.label_smoothing applies to"),
        ({"label_smoothing": 0.5}, r"--model.label_smoothing must be in \[0, 0.5\)"),
    ],
)
def test_bad_dpo_settings_name_the_flag(setting, message):
    with pytest.raises(UserInputError, match=message):
        DPOModule(**SHAPE, **setting)


def test_dpo_without_a_chat_model_to_start_from_is_refused(pairs_dir, tmp_path):
    dm = pref_data(pairs_dir)
    with pytest.raises(UserInputError, match="--model.init_from SFT.ckpt"):
        trainer(tmp_path, 2).fit(DPOModule(**SHAPE, vocab_size=dm.vocab_size), dm)


@pytest.mark.slow
def test_the_dpo_config_with_the_smoke_overlay_trains_logs_and_writes_a_chat_checkpoint(
    pairs_dir, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    import datasets

    # A 300-token BPE with the chat tokens: bf16 on a CPU without bf16 units made GPT-2's head 23 s here.
    rows = datasets.load_dataset(str(pairs_dir), split="train_prefs")
    bpe = chat_tokenizer(train_tokenizer("bpe-300", [m["content"] for row in rows for m in row["chosen"]]))
    init = sft_checkpoint(tmp_path / "sft.ckpt", tokenizer=bpe, n_layer=2, n_embd=64, block_size=128)  # smoke's model
    reward = RewardModule(**{**SHAPE, "vocab_size": bpe.vocab_size})
    save_module(reward, tmp_path / "rm.ckpt", bpe)
    args = ["fit", "-c", DPO, "-c", SMOKE, "--data.path", str(pairs_dir), "--model.init_from", init]
    args += ["--trainer.callbacks.reward_ckpt", str(tmp_path / "rm.ckpt"), "--trainer.callbacks.max_new_tokens", "8"]
    # The config's bf16 mixed precision (smoke.yaml sets fp32), accumulation (4) and workers, shrunk: 8 steps of
    # 2 batches of 2 pairs, a validation every 4 steps.
    short = ["--trainer.max_steps", "8", "--trainer.accumulate_grad_batches", "2", "--data.num_workers", "2"]
    short += ["--data.batch_size", "2", "--data.eval_batch_size", "2"]
    short += ["--trainer.precision", "bf16-mixed"]
    cli = run([*args, *short, "--trainer.val_check_interval", "8", "--trainer.log_every_n_steps", "2"])
    assert isinstance(cli.model, DPOModule) and cli.trainer.global_step == 8
    events = tmp_path / "runs" / "dpo_ultrafeedback" / "smoke"
    tags = ("train_rewards/chosen", "train_rewards/margins", "train_rewards/accuracies", "train_logps/rejected")
    for tag in ("train_loss", *tags, "train_kl"):
        assert sorted(scalars(events, tag)) == [1, 3, 5, 7], tag
    assert scalars(events, "train_loss")[1] == pytest.approx(math.log(2), abs=0.02)  # the first step's pairs
    validations = ("val_loss", "val_rewards/accuracies", "val_logps/chosen", "val_entropy", "val_kl", "train_eval_loss")
    for tag in (*validations, "samples/reward", "samples/kl", "samples/entropy", "samples/length"):
        assert len(scalars(events, tag)) == 2, tag
    # The checkpoint is a chat model's: generate, chat and evaluate-chat load it unchanged.
    model, tokenizer = load_checkpoint(str(events / "checkpoints" / "last.ckpt"), device="cpu")
    assert tokenizer.to_data() == bpe.to_data() and model.config.n_embd == 64
    policy = {k.removeprefix("model."): v for k, v in cli.model.state_dict().items() if k.startswith("model.")}
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, policy[key])


def test_accumulated_micro_batches_give_the_gradient_of_the_mean_over_all_pairs_of_the_step(pairs_dir, tmp_path):
    module = dpo_module(sft_checkpoint(tmp_path / "sft.ckpt"), dropout=0.0)
    module.model.train()
    module.trainer = L.Trainer(accelerator="cpu", accumulate_grad_batches=2, logger=False)
    dm = pref_data(pairs_dir, batch_size=2)
    dm.setup("fit")
    loader = iter(dm.train_dataloader())
    first, second = next(loader), next(loader)
    # Two micro-batches of 2 pairs (one with fewer tokens than the other), as Lightning runs them: each loss
    # divided by the accumulation, the gradients summed.
    for batch in (first, second):
        module._reference_logps = None
        loss = module.training_step(Batch(batch.inputs, batch.targets, torch.tensor(4), pair_ids=batch.pair_ids), 0)
        (loss / 2).backward()
    accumulated = [p.grad.clone() for p in module.model.parameters()]
    module.model.zero_grad()
    # The same 4 pairs in one batch: chosen rows first, then the rejected ones, padded to one width.
    width = max(first.inputs.shape[1], second.inputs.shape[1])

    def pad(t, value):
        return F.pad(t, (0, width - t.shape[1]), value=value)

    halves = [(pad(b.inputs, dm.tokenizer.eot_id), pad(b.targets, IGNORE_INDEX)) for b in (first, second)]
    x = torch.cat([halves[0][0][:2], halves[1][0][:2], halves[0][0][2:], halves[1][0][2:]])
    y = torch.cat([halves[0][1][:2], halves[1][1][:2], halves[0][1][2:], halves[1][1][2:]])
    module.training_step(Batch(x, y), 0).backward()  # no step count: the batch's own mean
    for got, expected in zip(accumulated, (p.grad for p in module.model.parameters()), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_the_two_initialised_from_lines_name_the_policy_and_the_reference(pairs_dir, tmp_path, caplog):
    init = sft_checkpoint(tmp_path / "sft.ckpt")
    dm = pref_data(pairs_dir, batch_size=4)
    with caplog.at_level(logging.INFO, logger="lightning_gpt"):
        trainer(tmp_path, 1).fit(DPOModule(**SHAPE, vocab_size=dm.vocab_size, init_from=init), dm)
    lines = sorted(r.getMessage() for r in caplog.records if "initialised from" in r.getMessage())
    vocab = chat_tokenizer().vocab_size
    assert lines == [
        f"{role} initialised from {init} (vocabulary {vocab} -> {vocab})" for role in ("policy", "reference (frozen)")
    ]
