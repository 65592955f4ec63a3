"""Preference pairs for DPO: the UltraFeedback DataModule's rendering, truncation, filtering, holdout and batches."""

import json
import logging
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch.trainer.states import TrainerFn

from data_modules import UltraFeedback
from data_modules.token_cache import meta_path
from data_modules.ultrafeedback import PairBatches, split_pair_batch
from lightning_gpt.chat import END_OF_TURN, render_prompt
from lightning_gpt.errors import UserInputError
from lightning_gpt.model import IGNORE_INDEX
from tests.conftest import (
    REAL_HUB,
    pair_row,
    parse_only,
    pref_data,
    preference_folder,
    preference_rows,
    sentence,
    turn,
    write_hub_folder,
)


def same_batch(a, b) -> bool:
    """Every part of two Batches equal."""
    parts = ("inputs", "targets", "step_count", "real_tokens", "pair_ids")
    return all(torch.equal(torch.as_tensor(getattr(a, p)), torch.as_tensor(getattr(b, p))) for p in parts)


def stats_of(dm: UltraFeedback, role: str) -> dict:
    dm.setup("test" if role == "test" else "fit")
    return json.loads(meta_path(dm.cache_base(dm.splits[role], role)).read_text())["stats"]


def all_pairs(dm: UltraFeedback, role: str) -> list[tuple[tuple[int, ...], ...]]:
    """(prompt, chosen answer, rejected answer) ids of every pair in a role's cache."""
    dataset = PairBatches(*dm._cache(role), batches=[], pad_id=dm.tokenizer.eot_id)
    return [tuple(tuple(part.tolist()) for part in dataset.pair(i)) for i in range(len(dataset.prompt))]


def hand_pair(dm: UltraFeedback, row: dict) -> tuple[tuple[int, ...], ...]:
    end = dm.tokenizer.token_id(END_OF_TURN)
    prompt = render_prompt(dm.tokenizer, row["chosen"][:-1])
    answers = [[*dm.tokenizer.encode(row[side][-1]["content"]), end] for side in ("chosen", "rejected")]
    return tuple(prompt), tuple(answers[0]), tuple(answers[1])


def prompt_length(y_row: torch.Tensor) -> int:
    """Tokens before the first scored target's token: the prompt of a row."""
    return int((y_row != IGNORE_INDEX).nonzero()[0]) + 1


def test_a_pair_is_the_hand_rendering_with_only_the_answers_scored(tmp_path):
    rng = random.Random(3)
    row = pair_row(
        "only", [turn("system", "Be brief."), turn("user", "Why is the sky blue?")], sentence(rng, 9), "Because."
    )
    dm = pref_data(preference_folder(tmp_path / "one", preference_rows(20), [row]))
    dm.setup("test")
    first, *rest = list(dm.test_dataloader())
    x, y = first.inputs, first.targets
    assert not rest
    prompt, chosen, rejected = hand_pair(dm, row)
    width = len(prompt) + max(len(chosen), len(rejected)) - 1
    assert x.shape == y.shape == (2, width)
    eot = dm.tokenizer.eot_id
    for at, answer in ((0, chosen), (1, rejected)):  # the chosen row first
        sequence = [*prompt, *answer]
        pad = width - (len(sequence) - 1)
        assert x[at].tolist() == sequence[:-1] + [eot] * pad
        assert y[at].tolist() == [IGNORE_INDEX] * (len(prompt) - 1) + list(answer) + [IGNORE_INDEX] * pad
    assert y[0].tolist()[len(prompt) + len(chosen) - 2] == dm.tokenizer.token_id(END_OF_TURN)  # <|end|> is scored
    assert (chosen_part := split_pair_batch(x, y)[0]) and torch.equal(chosen_part[0], x[:1])


def test_a_long_prompt_is_cut_from_the_left_and_a_long_answer_from_the_right(tmp_path):
    rng = random.Random(4)
    long_prompt = [turn("user", sentence(rng, 60))]
    rows = [
        pair_row("long-prompt", long_prompt, "Yes.", "No."),
        pair_row("long-answer", [turn("user", "Tell me.")], sentence(rng, 80), "Short."),
        pair_row("fits", [turn("user", "Hi.")], "Hello there.", "Go away."),
    ]
    dm = pref_data(
        preference_folder(tmp_path / "cut", rows, rows), block_size=48, max_prompt_tokens=16, val_split="test_prefs"
    )
    by_id = dict(zip(("long-prompt", "long-answer", "fits"), (hand_pair(dm, row) for row in rows), strict=True))
    pairs = {pair[2]: pair for pair in all_pairs(dm, "train")}  # keyed by the rejected answer (never cut here)
    prompt, chosen, rejected = pairs[by_id["long-prompt"][2]]
    full = by_id["long-prompt"]
    assert len(full[0]) > 16 and prompt == (dm.tokenizer.eot_id, *full[0][-15:])  # the eot and the latest 15 tokens
    assert (chosen, rejected) == full[1:]  # answers intact
    prompt, chosen, rejected = pairs[by_id["long-answer"][2]]
    full = by_id["long-answer"]
    assert prompt == full[0] and rejected == full[2]
    assert len(prompt) + len(chosen) == 49 and chosen == full[1][: len(chosen)]  # cut to block_size + 1, no <|end|>
    assert dm.tokenizer.token_id(END_OF_TURN) not in chosen
    assert pairs[by_id["fits"][2]] == by_id["fits"]
    stats = stats_of(dm, "train")
    assert stats["prompts_cut"] == 1 and stats["answers_cut"] == 1

    capped = pref_data(dm.path, block_size=48, max_prompt_tokens=16, max_answer_tokens=3, val_split="test_prefs")
    assert capped.cache_base("train_prefs") != dm.cache_base("train_prefs")
    for prompt, chosen, rejected in all_pairs(capped, "train"):
        assert len(prompt) <= 16 and 1 <= len(chosen) <= 3 and 1 <= len(rejected) <= 3


def test_the_limits_and_the_ties_are_flags(tmp_path):
    path = preference_folder(tmp_path / "cli", preference_rows(10))
    flags = ["--data.max_prompt_tokens", "16", "--data.max_answer_tokens", "3", "--data.drop_ties", "false"]
    run = ["--model.preset", "tiny", "--trainer.accelerator", "cpu", "--seed_everything", "0"]
    data = parse_only(["--data", "UltraFeedback", "--data.path", str(path), *flags, *run]).datamodule
    assert isinstance(data, UltraFeedback) and data.splits["val"] == "train_prefs"
    assert (data.max_prompt_tokens, data.max_answer_tokens, data.drop_ties) == (16, 3, False)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"max_prompt_tokens": 1}, r"--data.max_prompt_tokens .* 2 to --data.block_size 64"),
        ({"max_prompt_tokens": 65}, r"--data.max_prompt_tokens .* 2 to --data.block_size 64"),
        ({"max_answer_tokens": 0}, r"--data.max_answer_tokens must be positive"),
        ({"block_size": 3}, r"--data.block_size gives prompts of at most 1 tokens"),
        ({"val_fraction": 0.0}, r"--data.val_fraction"),
    ],
)
def test_unusable_limits_are_refused_naming_the_flag(tmp_path, setting, message):
    with pytest.raises(UserInputError, match=message):
        pref_data(preference_folder(tmp_path / "f", preference_rows(10)), **setting).prepare_data()


def test_ties_are_dropped_unless_asked_to_keep_them(tmp_path):
    path = preference_folder(tmp_path / "ties", preference_rows(40, ties_every=4))  # 10 ties
    dropped = pref_data(path, val_split="test_prefs")
    stats = stats_of(dropped, "train")
    assert stats["ties"] == 10 and stats["pairs"] == 30 and stats["skipped"] == 0
    kept = pref_data(path, val_split="test_prefs", drop_ties=False)
    assert kept.cache_base("train_prefs") != dropped.cache_base("train_prefs")
    assert stats_of(kept, "train")["pairs"] == 40


def test_bad_rows_are_skipped_counted_and_shown_once(tmp_path, caplog):
    good = preference_rows(30)
    ask = [turn("user", "Which?")]
    bad = [
        pair_row("empty-answer", ask, "Fine.", ""),
        {**pair_row("no-answer", ask, "Fine.", "Bad."), "rejected": ask},
        {**pair_row("ends-with-user", ask, "A.", "B."), "chosen": [*ask, turn("assistant", "A."), turn("user", "?")]},
        {**pair_row("other-prompt", ask, "A.", "B."), "rejected": [turn("user", "Other?"), turn("assistant", "B.")]},
        pair_row("same", ask, "Same.", "Same."),
        {**pair_row("bot", ask, "A.", "B."), "chosen": [turn("bot", "Which?"), turn("assistant", "A.")]},
    ]
    dm = pref_data(preference_folder(tmp_path / "bad", good + bad), val_split="test_prefs")
    with caplog.at_level(logging.WARNING):
        stats = stats_of(dm, "train")
    assert stats["rows"] == 36 and stats["skipped"] == 6 and stats["pairs"] == 30
    assert stats["skip_reasons"] == {
        "rejected: empty content": 1,
        "rejected: no assistant turn": 1,
        "chosen: the last turn is not the assistant's answer": 1,
        "chosen and rejected have different prompts": 1,
        "chosen and rejected are the same answer": 1,
        "chosen: unknown role 'bot'": 1,
    }
    assert stats["skip_example"] == "row 30: rejected: message 1 (assistant) has empty content"
    shown = [r.message for r in caplog.records if "skipped 6 malformed rows" in r.message]
    assert len(shown) == 1 and "30 pairs of 36 rows" in shown[0]


def test_a_split_with_no_usable_pair_names_the_split_and_the_reason(tmp_path):
    bad = [pair_row(str(i), [turn("user", "Hm?")], "Same.", "Same.") for i in range(6)]
    path = preference_folder(tmp_path / "allbad", preference_rows(20), bad)
    dm = pref_data(path)
    dm.prepare_data()  # fit reads train_prefs only
    with pytest.raises(UserInputError, match=r"--data.path .*allbad split 'test_prefs': .*6 'chosen and rejected"):
        dm.setup("test")
    assert not list(dm.cache_dir.glob("ultrafeedback-test_prefs-*"))  # no cache left behind
    ties = preference_folder(tmp_path / "ties", preference_rows(20), preference_rows(5, ties_every=1))
    with pytest.raises(UserInputError, match=r"split 'test_prefs': .*5 are ties.*--data.drop_ties false"):
        pref_data(ties).setup("test")
    assert len(list(pref_data(ties, drop_ties=False).test_dataloader())) == 2  # 5 pairs in batches of 4


def test_validation_is_held_out_of_train_prefs_by_prompt_id_and_test_reads_test_prefs(tmp_path):
    rows, test_rows = preference_rows(600, seed=1), preference_rows(12, seed=2)
    for i in range(300, 600):  # two pairs for each prompt_id, as the hub's version has several per prompt
        rows[i]["prompt_id"] = rows[i - 300]["prompt_id"]
    dm = pref_data(preference_folder(tmp_path / "h", rows, test_rows), val_fraction=0.05)
    assert dm.splits == {"train": "train_prefs", "val": "train_prefs", "test": "test_prefs"}
    dm.prepare_data()
    index = {hand_pair(dm, row): i for i, row in enumerate(rows + test_rows)}
    val, train = ({index[pair] for pair in all_pairs(dm, role)} for role in ("val", "train"))
    assert not val & train and val | train == set(range(600))
    assert 10 <= len(val) <= 60  # about 5%
    assert all((i in val) == (i + 300 in val) for i in range(300))  # one prompt_id, one side
    assert stats_of(dm, "val")["holdout"] == {"val_fraction": 0.05, "part": "val", "excluded_rows": 600 - len(val)}
    assert not list(dm.cache_dir.glob("ultrafeedback-test_prefs-*"))  # fit never reads test_prefs
    assert {index[pair] for pair in all_pairs(dm, "test")} == set(range(600, 612))

    reordered = pref_data(preference_folder(tmp_path / "r", rows[::-1], test_rows), val_fraction=0.05)
    assert {index[pair] for pair in all_pairs(reordered, "val")} == val  # whatever the row order
    on_test = pref_data(dm.path, val_split="test_prefs")
    assert {index[pair] for pair in all_pairs(on_test, "val")} == set(range(600, 612))
    assert len(all_pairs(on_test, "train")) == 600


def fake_trainer(accumulate: int = 1, **more) -> SimpleNamespace:
    """What the DataModule reads of a Trainer while training (ranks, accumulation, the epoch)."""
    return SimpleNamespace(
        training=True, current_epoch=0, world_size=1, global_rank=0, accumulate_grad_batches=accumulate, **more
    )


def test_training_batches_pair_chosen_and_rejected_rows_and_count_the_pairs_of_a_step(tmp_path):
    dm = pref_data(preference_folder(tmp_path / "t", preference_rows(60, system=True)), batch_size=5)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == len(dm.train_dataset(*dm._cache("train"))[0])
    seen = []
    for batch in batches:
        x, y, step_pairs, pair_ids = batch.inputs, batch.targets, batch.step_count, batch.pair_ids
        assert x.shape == y.shape and x.shape[0] == 10 and step_pairs == 5  # one device, no accumulation
        seen += pair_ids.tolist()
        (x_chosen, y_chosen), (x_rejected, y_rejected) = split_pair_batch(x, y)
        for i in range(5):
            p = prompt_length(y_chosen[i])
            assert prompt_length(y_rejected[i]) == p and torch.equal(x_chosen[i, :p], x_rejected[i, :p])
            assert not torch.equal(y_chosen[i], y_rejected[i])
    n_pairs = len(dm.train_dataset(*dm._cache("train"))[0].prompt)
    assert len(set(seen)) == len(seen) >= n_pairs - 5 and set(seen) <= set(range(n_pairs))  # each pair once, by index
    dm.trainer = fake_trainer(accumulate=3)
    assert {int(batch.step_count) for batch in dm.train_dataloader()} == {15}  # the pairs of the whole optimizer step


def test_training_resumes_mid_epoch_in_the_same_order(tmp_path):
    path = preference_folder(tmp_path / "r", preference_rows(120))

    def fresh() -> UltraFeedback:
        dm = pref_data(path)
        dm.trainer = fake_trainer()
        return dm

    dm = fresh()
    straight = list(dm.train_dataloader())
    assert len(straight) > 10
    for batch in straight[:7]:  # the training loop takes seven batches, then a checkpoint
        dm.on_after_batch_transfer(batch, 0)
    state = dm.state_dict()
    assert state["batches"] == 7
    resumed = fresh()
    resumed.load_state_dict(state)
    rest = list(resumed.train_dataloader())
    assert len(rest) == len(straight) - 7
    for a, b in zip(straight[7:], rest, strict=True):
        assert same_batch(a, b)
    other_seed = pref_data(path, seed=6)
    assert not all(same_batch(a, b) for a, b in zip(straight, other_seed.train_dataloader(), strict=False))


def test_evaluation_batches_hold_every_pair_once_in_a_fixed_order(tmp_path):
    path = preference_folder(tmp_path / "e", preference_rows(10), preference_rows(30, seed=9))
    dm = pref_data(path, eval_batch_size=4)
    dm.setup("test")
    first = [(b.inputs.clone(), b.targets.clone()) for b in dm.test_dataloader()]
    assert sum(len(x) for x, _ in first) == 60  # 30 pairs, two rows each
    again = pref_data(path, eval_batch_size=4)
    again.setup("test")
    for (x, y), b in zip(first, again.test_dataloader(), strict=True):
        assert torch.equal(x, b.inputs) and torch.equal(y, b.targets)

    dm.trainer = fake_trainer(state=SimpleNamespace(fn=TrainerFn.FITTING), limit_val_batches=2)
    dm.setup("fit")
    val, train_sample = dm.val_dataloader()  # while fitting: validation, then a fixed sample of training pairs
    assert len(train_sample) == len(val) == 1  # as many batches as validation has (the one held-out pair)
    for x, y in ((b.inputs, b.targets) for b in train_sample):
        (_, y_chosen), (_, y_rejected) = split_pair_batch(x, y)
        assert x.shape[0] == 8 and all(map(prompt_length, y_chosen)) and all(map(prompt_length, y_rejected))


def sequence_lengths(y: torch.Tensor) -> list[int]:
    """Each row's sequence length (prompt + answer), read off its targets: its last scored target is the answer's
    last token, at position length - 2 of y."""
    return [int((row != IGNORE_INDEX).nonzero()[-1]) + 2 for row in y]


def fitting_sample(dm: UltraFeedback):
    """The fixed sample of training pairs that validation scores beside the validation pairs while fitting."""
    dm.trainer = fake_trainer(state=SimpleNamespace(fn=TrainerFn.FITTING))
    dm.setup("fit")
    val, train_sample = dm.val_dataloader()
    return val, train_sample


def test_the_train_sample_scored_beside_validation_has_the_pair_lengths_of_training(tmp_path):
    rng = random.Random(4)
    # Answers of 1 to 100 words, prompts of 2 to 40: pair lengths from about 10 to 250 tokens.
    rows = [
        pair_row(str(i), [turn("user", sentence(rng, rng.randint(2, 40)))], *(sentence(rng, rng.randint(1, 100)),) * 2)
        for i in range(1200)
    ]
    for i, row in enumerate(rows):
        row["rejected"][-1]["content"] += f" No {i}."  # a different answer, as long as the chosen one give or take
    path = write_hub_folder(tmp_path / "l", {"train_prefs": rows[:1000], "test_prefs": rows[1000:]}, config="default")
    dm = pref_data(path, block_size=256, batch_size=8, eval_batch_size=8, val_split="test_prefs")
    val, train_sample = fitting_sample(dm)
    assert len(train_sample) == len(val) == 25  # 200 validation pairs in batches of 8
    sample = [n for b in train_sample for n in sequence_lengths(b.targets)]
    training = [n for b in dm.train_dataloader() for n in sequence_lengths(b.targets)]
    assert len(sample) == 2 * 200 and len(training) == 2 * 1000  # two sequences a pair; every training pair
    # The length distribution of training, not its longest pairs (which length-sorted groups give first).
    assert abs(np.mean(sample) - np.mean(training)) < 0.1 * np.mean(training)
    assert np.quantile(training, 0.1) > min(sample) and max(sample) > np.quantile(training, 0.9)
    pairs = np.concatenate(train_sample.dataset.batches)
    assert len(set(pairs.tolist())) == 200  # distinct training pairs
    _, again = fitting_sample(pref_data(path, block_size=256, batch_size=8, eval_batch_size=8, val_split="test_prefs"))
    assert [b.tolist() for b in again.dataset.batches] == [b.tolist() for b in train_sample.dataset.batches]


ULTRAFEEDBACK = REAL_HUB / "HuggingFaceH4" / "ultrafeedback_binarized"


@pytest.mark.skipif(not ULTRAFEEDBACK.is_dir(), reason="no ../shared/data/hub mirror here")
def test_the_real_mirror_reads_every_row_counts_its_ties_and_batches():
    dm = UltraFeedback(path=str(ULTRAFEEDBACK), block_size=256, batch_size=4, num_workers=0, val_split="test_prefs")
    stats = stats_of(dm, "train")
    assert stats["rows"] == 800
    assert 60 <= stats["ties"] <= 100  # about a tenth
    assert stats["pairs"] == 800 - stats["ties"] - stats["skipped"] and stats["skipped"] < 10
    batch = next(iter(dm.train_dataloader()))
    x, y, step_pairs = batch.inputs, batch.targets, batch.step_count
    assert x.shape[0] == 8 and x.shape[1] <= 256 and step_pairs == 4
    assert ((y != IGNORE_INDEX).sum(dim=1) > 0).all()
    assert np.all(np.asarray([prompt_length(row) for row in y]) <= 128)  # max_prompt_tokens = block_size // 2


@pytest.mark.skipif(not ULTRAFEEDBACK.is_dir(), reason="no ../shared/data/hub mirror here")
def test_the_real_mirror_train_sample_has_the_pair_lengths_of_training():
    # As configs/dpo_ultrafeedback.yaml: 1024 tokens, eval batches of 16; validated on test_prefs for 9 batches.
    dm = UltraFeedback(
        path=str(ULTRAFEEDBACK), block_size=1024, eval_batch_size=16, num_workers=0, val_split="test_prefs"
    )
    _, train_sample = fitting_sample(dm)
    sample = [n for b in train_sample for n in sequence_lengths(b.targets)]
    training = [
        n for pair in all_pairs(dm, "train") for n in (len(pair[0]) + len(pair[1]), len(pair[0]) + len(pair[2]))
    ]
    assert len(sample) == 2 * 16 * len(train_sample) >= 2 * 144
    # 288 sequences of a long-tailed distribution (up to 1025 tokens): within 20%, not the ~2x of the longest pairs.
    assert abs(np.mean(sample) - np.mean(training)) < 0.2 * np.mean(training)
