import json
import os

import numpy as np
import pytest

from data_modules import WikiText103
from data_modules.token_cache import array_path, meta_path, read_cache_meta, write_cache
from lightning_gpt.errors import UserInputError
from lightning_gpt.tokenizer import Tokenizer
from tests.conftest import synthetic_articles, wikitext_rows, write_hub_folder


def built(dm: WikiText103, split: str = "train"):
    return array_path(dm.cache_base(split), "tokens")


def test_cache_is_built_once_and_reused(wikitext_dir):
    dm = WikiText103(path=str(wikitext_dir), block_size=16)
    dm.prepare_data()
    bin_path = built(dm)
    stamp = bin_path.stat().st_mtime_ns, bin_path.stat().st_ino
    again = WikiText103(path=str(wikitext_dir), block_size=16)
    again.prepare_data()
    assert built(again) == bin_path
    assert (bin_path.stat().st_mtime_ns, bin_path.stat().st_ino) == stamp


def test_cache_is_rebuilt_when_the_data_changes(wikitext_dir):
    dm = WikiText103(path=str(wikitext_dir), block_size=16)
    dm.prepare_data()
    old = built(dm)
    old_meta = json.loads(meta_path(dm.cache_base("train")).read_text())
    write_hub_folder(
        wikitext_dir,
        {
            "train": wikitext_rows(synthetic_articles(41, seed=9)),
            "validation": wikitext_rows(synthetic_articles(6, seed=2)),
        },
    )
    dm2 = WikiText103(path=str(wikitext_dir), block_size=16)
    dm2.prepare_data()
    assert built(dm2) != old
    new_meta = json.loads(meta_path(dm2.cache_base("train")).read_text())
    assert new_meta["arrays"]["tokens"]["length"] != old_meta["arrays"]["tokens"]["length"]
    assert old.is_file()  # the old cache is left alone, not overwritten


def test_cache_holds_articles_separated_by_end_of_text(wikitext_dir):
    dm = WikiText103(path=str(wikitext_dir), block_size=16)
    dm.prepare_data()
    dm.setup("fit")
    tokens = np.asarray(dm.tokens("train"))
    eot = dm.tokenizer.eot_id
    assert (tokens == eot).sum() == 40
    assert json.loads(meta_path(dm.cache_base("train")).read_text())["stats"]["documents"] == 40
    assert tokens[-1] == eot
    first = dm.tokenizer.decode(tokens[: np.argmax(tokens == eot)].tolist())
    assert first.startswith(" = Article 0 = \n") and " = Article 1 = " not in first


def test_a_failed_write_leaves_nothing_behind_and_keeps_the_old_cache(tmp_path):
    base = tmp_path / "split"
    dtypes = {"tokens": np.dtype(np.uint16), "mask": np.dtype(np.uint8)}
    write_cache(base, [{"tokens": np.arange(10), "mask": np.ones(10)}], dtypes, {"tokenizer": "t"})
    before = array_path(base, "tokens").read_bytes()

    def broken_chunks():
        yield {"tokens": np.arange(5), "mask": np.ones(5)}
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_cache(base, broken_chunks(), dtypes, {"tokenizer": "t"})
    assert array_path(base, "tokens").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["split.json", "split.mask.bin", "split.tokens.bin"]
    assert read_cache_meta(base, "t")["arrays"]["mask"]["length"] == 10


def test_a_cache_from_another_tokenizer_is_refused(wikitext_dir):
    dm = WikiText103(path=str(wikitext_dir), block_size=16)
    dm.prepare_data()
    chat_fingerprint = Tokenizer(extra_special_tokens=["<|user|>"]).fingerprint
    with pytest.raises(UserInputError, match="built by tokenizer .* delete"):
        read_cache_meta(dm.cache_base("train"), chat_fingerprint)


def test_a_truncated_cache_is_refused_with_the_file_named(wikitext_dir):
    dm = WikiText103(path=str(wikitext_dir), block_size=16)
    dm.prepare_data()
    bin_path = built(dm)
    with open(bin_path, "r+b") as f:
        f.truncate(bin_path.stat().st_size - 2)
    with pytest.raises(UserInputError, match=str(bin_path.name)):
        WikiText103(path=str(wikitext_dir), block_size=16).prepare_data()
