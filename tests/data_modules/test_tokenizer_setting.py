"""--data.tokenizer (data_modules/tokenizer_setting.py): the token cache's key follows the tokenizer setting, and a
trained tokenizer is cached beside the token caches."""

from lightning_gpt.tokenizer import UNKNOWN
from tests.conftest import unicode_corpus


def test_the_token_cache_key_follows_the_tokenizer_setting(tmp_path):
    from data_modules import TextFiles

    corpus = unicode_corpus(tmp_path / "corpus")
    keys = {}
    for spec in ("gpt2", "char", "bpe-300", "bpe-400"):
        dm = TextFiles(path=str(corpus), tokenizer=spec, cache_dir=str(tmp_path / "cache"), block_size=16)
        keys[spec] = dm.cache_base("train", "train")
    assert len(set(keys.values())) == 4
    trained = sorted(p.name for p in (tmp_path / "cache").glob("textfiles-tokenizer-*.json"))
    assert [name.split("-")[2] for name in trained] == ["bpe", "bpe", "char"]  # cached beside the token caches
    again = TextFiles(path=str(corpus), tokenizer="char", cache_dir=str(tmp_path / "cache"), block_size=16)
    assert again.cache_base("train", "train") == keys["char"]  # read back from its cache, the same tokenizer
    held_out = set(again.tokens("val").tolist()) - set(again.tokens("train").tolist())
    assert held_out <= {again.tokenizer.token_id(UNKNOWN)}  # trained on the training part: val may hold unknowns
