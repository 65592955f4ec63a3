import pytest

from lightning_gpt import tokenizer as tokenizer_module
from lightning_gpt.errors import UserInputError
from lightning_gpt.tokenizer import GPT2_BASE_VOCAB, Tokenizer


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
