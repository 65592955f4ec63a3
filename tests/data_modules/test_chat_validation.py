"""SFT validation: held out of train_sft by a stable hash, evaluated in a random order of all lengths; test_sft is
for `test` only."""

import itertools
import json
from types import SimpleNamespace

import numpy as np
import pytest
from lightning.pytorch.trainer.states import TrainerFn

from data_modules import UltraChat200k
from data_modules.chat_messages import sample_batches
from data_modules.token_cache import meta_path
from data_modules.windows import LazyArray
from lightning_gpt.chat import render_conversation
from lightning_gpt.errors import UserInputError
from tests.conftest import REAL_HUB, SFT, parse_only, synthetic_conversations, write_hub_folder


def chat_data(path, **overrides) -> UltraChat200k:
    args = {"block_size": 256, "batch_size": 8, "eval_batch_size": 8, "num_workers": 0, "seed": 5}
    return UltraChat200k(path=str(path), **{**args, **overrides})


def cached_conversations(dm: UltraChat200k, role: str) -> list[tuple[int, ...]]:
    """The token ids of each sample in a role's cache, as built by prepare_data."""
    base, meta = dm._cache(role)
    tokens = np.asarray(LazyArray(base, meta, "tokens").values)
    lengths = np.asarray(LazyArray(base, meta, "lengths").values)
    starts = np.cumsum(lengths) - lengths
    return [tuple(tokens[s : s + n].tolist()) for s, n in zip(starts, lengths, strict=True)]


def ids_in(dm: UltraChat200k, role: str, rows: list[dict]) -> list[str]:
    by_tokens = {tuple(render_conversation(dm.tokenizer, row["messages"])[0]): row["prompt_id"] for row in rows}
    assert len(by_tokens) == len(rows)  # every synthetic conversation is distinct
    return sorted(by_tokens[sample] for sample in cached_conversations(dm, role))


@pytest.fixture(scope="module")
def many_rows() -> list[dict]:
    return synthetic_conversations(2000, seed=7, turns=1)


def holdout_folder(root, rows):
    return write_hub_folder(root, {"train_sft": rows, "test_sft": rows[:10]}, config="default")


def test_validation_is_held_out_of_train_sft_stably_and_whatever_the_row_order(tmp_path, many_rows):
    dm = chat_data(holdout_folder(tmp_path / "a", many_rows), val_fraction=0.05)
    dm.prepare_data()
    val, train = ids_in(dm, "val", many_rows), ids_in(dm, "train", many_rows)
    assert not set(val) & set(train)
    assert sorted(val + train) == sorted(row["prompt_id"] for row in many_rows)
    assert 60 <= len(val) <= 140  # about 5% of 2,000
    # A stable hash (not Python's per-process hash()): the same rows in every run, on every machine.
    assert sorted(val, key=int)[:6] == ["39", "51", "55", "146", "149", "152"]

    shuffled = chat_data(holdout_folder(tmp_path / "b", many_rows[::-1]), val_fraction=0.05)
    shuffled.prepare_data()
    assert ids_in(shuffled, "val", many_rows) == val

    stats = json.loads(meta_path(dm.cache_base("train_sft", "train")).read_text())["stats"]
    assert stats["rows"] == 2000 and stats["holdout"]["excluded_rows"] == len(val)


def test_rows_without_prompt_id_are_held_out_by_their_messages(tmp_path, many_rows):
    rows = [{"messages": row["messages"]} for row in many_rows[:400]]
    dm = chat_data(holdout_folder(tmp_path / "d", rows), val_fraction=0.1)
    dm.prepare_data()
    val, train = set(cached_conversations(dm, "val")), set(cached_conversations(dm, "train"))
    assert not val & train and len(val) + len(train) == 400
    assert 20 <= len(val) <= 65


def test_held_out_and_training_caches_have_their_own_keys(ultrachat_dir):
    dm = chat_data(ultrachat_dir)
    assert dm.splits == {"train": "train_sft", "val": "train_sft", "test": "test_sft"}
    keys = {dm.cache_base("train_sft", "train"), dm.cache_base("train_sft", "val")}
    keys.add(chat_data(ultrachat_dir, val_fraction=0.02).cache_base("train_sft", "val"))
    keys.add(chat_data(ultrachat_dir, messages_column="chat").cache_base("train_sft", "train"))
    keys.add(chat_data(ultrachat_dir, val_split="test_sft").cache_base("train_sft", "train"))  # all of train_sft
    assert len(keys) == 5


def test_a_small_split_still_validates_on_one_row(tmp_path, many_rows):
    dm = chat_data(holdout_folder(tmp_path / "s", many_rows[:20]), val_fraction=0.01)
    dm.prepare_data()
    assert len(ids_in(dm, "val", many_rows[:20])) == 1
    assert len(ids_in(dm, "train", many_rows[:20])) == 19


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_a_val_fraction_out_of_range_is_named(ultrachat_dir, fraction):
    with pytest.raises(UserInputError, match=r"--data.val_fraction .*--data.val_split"):
        chat_data(ultrachat_dir, val_fraction=fraction).prepare_data()


def test_fit_and_validate_never_read_test_sft_and_test_does(ultrachat_dir):
    dm = chat_data(ultrachat_dir)
    dm.prepare_data()  # the fit stage: train and val
    assert not list(dm.cache_dir.glob("ultrachat200k-test_sft-*"))
    dm.setup("test")
    test_samples = sum(b.rows for b in dm.test_dataloader())
    assert test_samples == 24  # the whole of test_sft
    assert list(dm.cache_dir.glob("ultrachat200k-test_sft-*"))


def test_the_sft_config_holds_out_validation_and_tests_on_test_sft(ultrachat_dir):
    # The data section as the config has it; a tiny model, since building gpt2-124m's weights costs seconds.
    cli = parse_only(
        ["-c", SFT, "--trainer.accelerator", "cpu", "--model.preset", "tiny", "--data.path", str(ultrachat_dir)]
    )
    assert cli.datamodule.splits == {"train": "train_sft", "val": "train_sft", "test": "test_sft"}
    assert cli.datamodule.holds_out and cli.datamodule.val_fraction == 0.01


def test_limited_validation_is_a_random_sample_of_all_lengths(tmp_path):
    rows = [row for turns in range(1, 7) for row in synthetic_conversations(100, seed=turns, turns=turns)]
    for i, row in enumerate(rows):
        row["prompt_id"] = f"id{i}"
    folder = write_hub_folder(tmp_path / "v", {"train_sft": rows, "test_sft": rows}, config="default")
    dm = chat_data(folder, val_split="test_sft", block_size=512)
    dm.setup("validate")
    all_lengths = np.asarray(LazyArray(*dm._cache("val"), "lengths").values)
    loader = dm.val_dataloader()
    seen = [len(loader.dataset.lengths[b]) for b in loader.dataset.batches]
    assert sum(seen) == len(rows)  # the whole split, each conversation once
    first = np.concatenate([loader.dataset.batches[i] for i in itertools.islice(loader.sampler, 8)])  # 64 of 600
    sampled = all_lengths[first]
    assert sampled.min() < np.median(all_lengths) < sampled.max()
    assert np.quantile(all_lengths, 0.25) < sampled.mean() < np.quantile(all_lengths, 0.75)
    again = chat_data(folder, val_split="test_sft", block_size=512)
    again.setup("validate")
    assert [b.tolist() for b in again.val_dataloader().dataset.batches] == [b.tolist() for b in loader.dataset.batches]


def test_a_train_sample_draws_samples_not_batches_so_its_mean_length_is_the_splits():
    lengths = np.random.default_rng(0).integers(10, 250, size=4096)  # mean 130, sd 69
    for seed in range(20):
        batches = sample_batches(lengths, 32, 4, seed)
        picked = np.concatenate(batches)
        assert [len(b) for b in batches] == [32] * 4 and len(set(picked.tolist())) == 128
        # 128 draws: a standard error of 6 tokens. 4 drawn batches of similar lengths would be 4 draws (35 tokens).
        assert abs(lengths[picked].mean() - lengths.mean()) < 0.15 * lengths.mean()
        spans = sorted((lengths[b].min(), lengths[b].max()) for b in batches)  # batched by length: little padding
        assert all(high <= next_low for (_, high), (next_low, _) in itertools.pairwise(spans))
    assert [b.tolist() for b in sample_batches(lengths, 32, 4, 3)] == [
        b.tolist() for b in sample_batches(lengths, 32, 4, 3)
    ]
    few = sample_batches(lengths[:50], 32, 4, 0)  # fewer samples than asked for: all of them, once
    assert sorted(np.concatenate(few).tolist()) == list(range(50)) and len(few) == 2


def test_the_train_sample_scored_beside_validation_has_the_lengths_of_training(tmp_path):
    rows = [row for turns in range(1, 7) for row in synthetic_conversations(100, seed=turns, turns=turns)]
    for i, row in enumerate(rows):
        row["prompt_id"] = f"id{i}"
    folder = write_hub_folder(tmp_path / "s", {"train_sft": rows, "test_sft": rows[:160]}, config="default")
    dm = chat_data(folder, val_split="test_sft", block_size=512)
    dm.trainer = SimpleNamespace(state=SimpleNamespace(fn=TrainerFn.FITTING), world_size=1, global_rank=0)
    dm.setup("fit")
    val, train_sample = dm.val_dataloader()
    assert len(train_sample) == len(val) == 20
    training = np.asarray(LazyArray(*dm._cache("train"), "lengths").values)
    sampled = training[np.concatenate(train_sample.dataset.batches)]
    assert len(sampled) == 160 and abs(sampled.mean() - training.mean()) < 0.1 * training.mean()


ULTRACHAT = REAL_HUB / "HuggingFaceH4" / "ultrachat_200k"


@pytest.mark.skipif(not ULTRACHAT.is_dir(), reason="no ../shared/data/hub mirror here")
def test_the_real_mirror_holds_out_a_few_conversations():
    dm = UltraChat200k(path=str(ULTRACHAT), block_size=1024, batch_size=16, num_workers=0)
    dm.prepare_data()
    val, train = set(cached_conversations(dm, "val")), set(cached_conversations(dm, "train"))
    assert 1 <= len(val) <= 20 and not val & train
    assert len(val) + len(train) == 700
