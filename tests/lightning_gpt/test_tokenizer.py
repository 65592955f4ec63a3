"""Tokenizers (lightning_gpt/tokenizer.py): GPT-2's ids, and tokenizers trained on your own text (`char`, `bpe-N`):
Unicode round trips, clear errors, chat tokens, and their plain-data form that checkpoints carry."""

import pytest

from lightning_gpt import tokenizer as tokenizer_module
from lightning_gpt.chat import CHAT_SPECIAL_TOKENS, chat_tokenizer
from lightning_gpt.errors import UserInputError
from lightning_gpt.tokenizer import GPT2_BASE_VOCAB, UNKNOWN, Tokenizer, tokenizer_from_data, train_tokenizer


def test_gpt2_ids_match_the_reference():
    tok = Tokenizer()
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.vocab_size == 50257
    assert tok.eot_id == 50256


def test_round_trip_keeps_text_exactly():
    tok = Tokenizer()
    text = " = Valkyria Chronicles III = \n Senjō no Valkyria 3 : 1950s @-@ era <|endoftext|> naïve 😀\n"
    assert tok.decode(tok.encode(text)) == text


def test_special_token_text_in_data_is_plain_text():
    tok = Tokenizer()
    assert tok.eot_id not in tok.encode("a <|endoftext|> b")


def test_extra_special_tokens_follow_the_gpt2_vocabulary():
    tok = Tokenizer(extra_special_tokens=["<|user|>", "<|assistant|>"])
    assert tok.token_id("<|user|>") == GPT2_BASE_VOCAB
    assert tok.token_id("<|assistant|>") == GPT2_BASE_VOCAB + 1
    assert tok.vocab_size == GPT2_BASE_VOCAB + 2
    assert tok.fingerprint != Tokenizer().fingerprint
    assert tok.encode("Hello world") == [15496, 995]


def test_damaged_vocabulary_file_is_refused(monkeypatch):
    monkeypatch.setattr(tokenizer_module, "GPT2_VOCAB_SHA256", "0" * 64)
    with pytest.raises(UserInputError, match="gpt2.tiktoken.*reinstall"):
        Tokenizer()


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
