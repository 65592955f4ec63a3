import json
import os

import numpy as np
import pytest

from data_modules import WikiText103
from data_modules.token_cache import read_cache_meta, write_token_cache
from lightning_gpt.errors import UserInputError
from lightning_gpt.tokenizer import Tokenizer
from tests.conftest import synthetic_articles, wikitext_rows, write_hub_folder


def built(dm: WikiText103, split: str = "train"):
    return dm.cache_path(split)


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
    assert (
        json.loads(built(dm2).with_suffix(".json").read_text())["n_tokens"]
        != json.loads(old.with_suffix(".json").read_text())["n_tokens"]
    )


def test_cache_holds_articles_separated_by_end_of_text(wikitext_dir):
    dm = WikiText103(path=str(wikitext_dir), block_size=16)
    dm.prepare_data()
    dm.setup("fit")
    tokens = np.asarray(dm._sources["train"].tokens)
    eot = dm.tokenizer.eot_id
    assert (tokens == eot).sum() == 40
    assert tokens[-1] == eot
    first = dm.tokenizer.decode(tokens[: np.argmax(tokens == eot)].tolist())
    assert first.startswith(" = Article 0 = \n") and " = Article 1 = " not in first


def test_a_failed_write_leaves_nothing_behind_and_keeps_the_old_cache(tmp_path):
    target = tmp_path / "split.bin"
    write_token_cache(target, [np.arange(10)], np.dtype(np.uint16), {"tokenizer": "t"})
    before = target.read_bytes()

    def broken_chunks():
        yield np.arange(5)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_token_cache(target, broken_chunks(), np.dtype(np.uint16), {"tokenizer": "t"})
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["split.bin", "split.json"]


def test_a_cache_from_another_tokenizer_is_refused(wikitext_dir):
    dm = WikiText103(path=str(wikitext_dir), block_size=16)
    dm.prepare_data()
    chat_fingerprint = Tokenizer(extra_special_tokens=["<|user|>"]).fingerprint
    with pytest.raises(UserInputError, match="built by tokenizer .* delete"):
        read_cache_meta(built(dm), chat_fingerprint)


def test_a_truncated_cache_is_refused_with_the_file_named(wikitext_dir):
    dm = WikiText103(path=str(wikitext_dir), block_size=16)
    dm.prepare_data()
    bin_path = built(dm)
    with open(bin_path, "r+b") as f:
        f.truncate(bin_path.stat().st_size - 2)
    with pytest.raises(UserInputError, match=str(bin_path.name)):
        WikiText103(path=str(wikitext_dir), block_size=16).prepare_data()
