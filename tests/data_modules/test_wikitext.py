import numpy as np
import pytest
import torch

from data_modules import WikiText103
from data_modules.wikitext import wikitext_articles
from data_modules.windows import EvalWindows, LazyArray, ResumableWindowSampler, ShardSampler, TrainWindows
from lightning_gpt.errors import UserInputError
from lightning_gpt.model import IGNORE_INDEX
from tests.conftest import write_hub_folder


def ready(path, split_stage="fit", **kwargs) -> WikiText103:
    dm = WikiText103(path=str(path), **{"block_size": 16, "batch_size": 4, "num_workers": 0, **kwargs})
    dm.prepare_data()
    dm.setup(split_stage)
    return dm


def test_rows_are_joined_into_articles_at_level_one_titles():
    rows = ["", " = A = \n", "", " text a \n", " = = Section = = \n", " more a \n", " = B = \n", " text b \n"]
    assert list(wikitext_articles(iter(rows))) == [
        " = A = \n text a \n = = Section = = \n more a \n",
        " = B = \n text b \n",
    ]


def test_validation_predicts_every_token_exactly_once(wikitext_dir):
    dm = ready(wikitext_dir)
    tokens = np.asarray(dm.tokens("val"))
    targets = torch.cat([b.targets for b in dm.val_dataloader()], dim=0).flatten()
    targets = targets[targets != IGNORE_INDEX]
    assert targets.tolist() == tokens[1:].tolist()


def test_eval_windows_shard_across_ranks_without_repeats(wikitext_dir):
    dm = ready(wikitext_dir)
    dataset = EvalWindows(LazyArray(*dm._cache("val")), 16, pad_id=0)
    shards = [list(ShardSampler(dataset, num_replicas=3, rank=r)) for r in range(3)]
    assert sorted(i for shard in shards for i in shard) == list(range(len(dataset)))


def test_training_order_depends_only_on_seed_and_epoch(wikitext_dir):
    dm = ready(wikitext_dir)
    dataset = TrainWindows(LazyArray(*dm._cache("train")), 16)

    def order(seed, epoch, **kw):
        sampler = ResumableWindowSampler(dataset, seed=seed, **kw)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1)
    assert order(1, 0) != order(2, 0)
    offsets = order(1, 0)
    assert len(set(np.diff(sorted(offsets)))) == 1  # non-overlapping windows, one stride
    ranks = [set(order(1, 0, num_replicas=2, rank=r)) for r in range(2)]
    assert not ranks[0] & ranks[1]


def test_resumed_sampler_continues_where_it_stopped(wikitext_dir):
    dm = ready(wikitext_dir)
    dataset = TrainWindows(LazyArray(*dm._cache("train")), 16)
    full = ResumableWindowSampler(dataset, seed=3)
    full.set_epoch(2)
    resumed = ResumableWindowSampler(dataset, seed=3)
    resumed.resume_from(epoch=2, items=8)
    resumed.set_epoch(2)
    assert list(resumed) == list(full)[8:]
    resumed.set_epoch(3)
    assert len(list(resumed)) == len(full)


def test_training_windows_are_shifted_targets(wikitext_dir):
    dm = ready(wikitext_dir)
    batch = next(iter(dm.train_dataloader()))
    x, y = batch.inputs, batch.targets
    assert x.shape == y.shape == (4, 16)
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert int(batch.step_count) == 4 * 16  # every window's targets count


def test_missing_folder_names_the_flag(tmp_path):
    with pytest.raises(UserInputError, match=r"--data.path .*no such folder"):
        ready(tmp_path / "nope")


def test_unreachable_hub_says_to_pass_a_local_path():
    with pytest.raises(UserInputError, match=r"could not reach the Hugging Face hub.*--data.path"):
        ready("Salesforce/wikitext")


def test_missing_column_is_named(tmp_path):
    folder = write_hub_folder(tmp_path / "d", {"train": [{"body": "x"}], "validation": [{"body": "y"}]})
    with pytest.raises(UserInputError, match=r"lacks \['text'\]"):
        ready(folder)


def test_text_column_of_the_wrong_type_is_named(tmp_path):
    folder = write_hub_folder(tmp_path / "d", {"train": [{"text": 3}], "validation": [{"text": 4}]})
    with pytest.raises(UserInputError, match=r"column 'text' holds .*int"):
        ready(folder)


def test_empty_split_is_named(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = write_hub_folder(tmp_path / "d", {"train": [{"text": " = A = \n"}], "validation": [{"text": "v"}]})
    pq.write_table(
        pa.table({"text": pa.array([], pa.string())}), folder / "wikitext-103-raw-v1" / "train-00000-of-00001.parquet"
    )
    with pytest.raises(UserInputError, match=r"split 'train'.*(empty|not empty)"):
        ready(folder)


def test_missing_split_lists_the_ones_there(wikitext_dir):
    with pytest.raises(UserInputError, match=r"Unknown split.*validation"):
        ready(wikitext_dir, train_split="training")


def test_split_too_small_for_a_batch_is_explained(tmp_path):
    folder = write_hub_folder(
        tmp_path / "d", {"train": [{"text": " = A = \n tiny text . \n"}] * 3, "validation": [{"text": " v \n"}]}
    )
    with pytest.raises(UserInputError, match=r"has 31 tokens to train on.*--model.block_size 16 \(or less\) fits it"):
        ready(folder, block_size=64).train_dataloader()


def test_a_split_of_blank_lines_fails_and_leaves_no_cache(tmp_path):
    folder = write_hub_folder(tmp_path / "d", {"train": [{"text": ""}, {"text": " \n"}], "validation": [{"text": "v"}]})
    dm = WikiText103(path=str(folder), block_size=16, num_workers=0)
    with pytest.raises(UserInputError, match=r"split 'train' holds no usable text"):
        dm.prepare_data()
    assert not list(dm.cache_dir.glob("*train*"))
