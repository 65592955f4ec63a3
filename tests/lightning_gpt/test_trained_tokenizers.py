"""Tokenizers trained on your own text (`char`, `bpe-N`): Unicode round trips, clear errors, chat tokens, the token
cache key, and the checkpoint that carries the tokenizer."""

from pathlib import Path

import pytest

from lightning_gpt.chat import CHAT_SPECIAL_TOKENS, chat_tokenizer
from lightning_gpt.errors import UserInputError
from lightning_gpt.tokenizer import UNKNOWN, Tokenizer, tokenizer_from_data, train_tokenizer

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TEXT = "Hello, world! Привет, мир! 你好，世界！ 😀🚀 naïve café\n" * 20


@pytest.fixture(scope="module", params=["char", "bpe-300"])
def trained(request):
    return train_tokenizer(request.param, [TEXT])


def test_unicode_round_trip(trained):
    for text in ("Привет, мир!", "你好，世界！", "😀🚀", TEXT):
        assert trained.decode(trained.encode(text)) == text
    assert trained.eot_id == trained.vocab_size - 1 - (trained.kind == "char")


def test_bpe_encodes_unseen_text_bytewise():
    bpe = train_tokenizer("bpe-300", [TEXT])
    assert bpe.decode(bpe.encode("Ελληνικά ☃ 👩‍💻")) == "Ελληνικά ☃ 👩‍💻"
    assert max(bpe.encode(TEXT)) < bpe.eot_id  # special ids follow the learned ones


@pytest.mark.parametrize("spec", ["gpt2", "char", "bpe-300"])
def test_invalid_surrogate_is_a_clear_error(spec):
    tokenizer = train_tokenizer(spec, [TEXT])
    with pytest.raises(UserInputError, match="unpaired surrogate"):
        tokenizer.encode("ok \ud800 no")
    with pytest.raises(UserInputError, match="unpaired surrogate"):
        tokenizer.encode_batch(["fine", "\udfff"])


def test_unknown_character_maps_to_unk():
    char = train_tokenizer("char", ["abc"])
    assert char.encode("abz") == [0, 1, char.token_id(UNKNOWN)]
    assert char.decode(char.encode("abz")) == "ab" + UNKNOWN


@pytest.mark.parametrize("spec", ["gpt2", "char", "bpe-300"])
def test_chat_tokens_on_every_tokenizer(spec):
    base = train_tokenizer(spec, [TEXT])
    chat = chat_tokenizer(base)
    ids = [chat.token_id(name) for name in CHAT_SPECIAL_TOKENS]
    assert ids == list(range(base.vocab_size, base.vocab_size + 4))
    assert chat.vocab_size == base.vocab_size + 4 and chat.eot_id == base.eot_id
    assert chat.encode("Привет") == base.encode("Привет")
    assert chat.decode([ids[1], *chat.encode("Hello 😀"), ids[3]]) == "<|user|>Hello 😀<|end|>"
    assert chat.fingerprint != base.fingerprint
    if spec == "gpt2":
        assert chat.fingerprint == chat_tokenizer().fingerprint


@pytest.mark.parametrize("spec", ["gpt2", "char", "bpe-300"])
def test_plain_data_round_trip(spec):
    tokenizer = chat_tokenizer(train_tokenizer(spec, [TEXT]))
    data = tokenizer.to_data()
    assert _plain(data)
    rebuilt = tokenizer_from_data(data)
    assert type(rebuilt) is type(tokenizer) and rebuilt.fingerprint == tokenizer.fingerprint
    assert rebuilt.encode(TEXT) == tokenizer.encode(TEXT) and rebuilt.special_tokens == tokenizer.special_tokens


def test_bad_spec_names_the_flag():
    for spec in ("bpe-10", "bpe", "words", "bpe-x"):
        with pytest.raises(UserInputError, match="--data.tokenizer"):
            train_tokenizer(spec, [TEXT])
    assert isinstance(train_tokenizer("gpt2", []), Tokenizer)


def _plain(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return isinstance(value, (str, int))


def _corpus(folder):
    folder.mkdir()
    for i in range(24):
        (folder / f"doc{i}.txt").write_text(f"Document {i}: Привет, мир! 你好 😀. " * 12, encoding="utf-8")
    return folder


def test_the_token_cache_key_follows_the_tokenizer_setting(tmp_path):
    from data_modules import TextFiles

    corpus = _corpus(tmp_path / "corpus")
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


def test_the_checkpoint_alone_rebuilds_the_tokenizer(tmp_path, monkeypatch, capsys):
    from lightning_gpt.cli import run
    from lightning_gpt.loading import load_checkpoint
    from tests.conftest import command

    corpus = _corpus(tmp_path / "corpus")
    monkeypatch.chdir(tmp_path)
    cli = run(
        [
            *("fit", "-c", str(CONFIGS / "pretrain_text.yaml"), "-c", str(CONFIGS / "smoke.yaml")),
            *("--data.path", str(corpus), "--data.tokenizer", "char", "--data.cache_dir", str(tmp_path / "cache")),
            *("--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--model.block_size", "32"),
        ]
    )
    dm = cli.datamodule
    assert cli.model.model.config.vocab_size >= dm.tokenizer.vocab_size == dm.vocab_size
    assert "val_bpb" in cli.trainer.callback_metrics  # bytes counted from the text: comparable across tokenizers
    (ckpt,) = tmp_path.glob("runs/**/last.ckpt")
    for path in (tmp_path / "cache").iterdir():  # nothing but the checkpoint
        path.unlink() if path.is_file() else None
    _, tokenizer = load_checkpoint(str(ckpt), device="cpu")
    text = (corpus / "doc3.txt").read_text(encoding="utf-8")
    assert type(tokenizer).__name__ == "CharTokenizer" and tokenizer.decode(tokenizer.encode(text)) == text
    capsys.readouterr()
    command("generate", ["--ckpt_path", str(ckpt), "--prompt", "Привет", "--max_new_tokens", "5", "--device", "cpu"])
    assert capsys.readouterr().out.startswith("Привет")
