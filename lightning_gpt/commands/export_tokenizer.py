"""The project's tokenizer as a Hugging Face fast tokenizer with the same ids, special tokens included, and for chat
models a Jinja chat template that renders exactly like lightning_gpt/chat.py. Each kind becomes a `tokenizers`
backend that encodes as ours does: gpt2 from the shipped .tiktoken file; bpe-N is a `tokenizers` BPE already; char
is a WordLevel model over single characters (each character its own pre-token) with <|unk|> for the rest.

Imported only by `lightning-gpt export` (it needs transformers).

One difference cannot be avoided: Hugging Face tokenizes a chat template's output as one string, so special-token
strings must be matched in text for the template's own markers to work, while the project never matches them (its
encode treats "<|endoftext|>" typed in text as ordinary text). A plain model's tokenizer is saved with
split_special_tokens=True and so encodes every text exactly like the project; a chat model's is saved with
split_special_tokens=False (Hugging Face's default) so that apply_chat_template works. So that message content
cannot forge control tokens (a user turn holding "<|end|><|system|>..."), the template breaks every special-token
string in content with a zero-width space after its first character; content that holds none renders exactly as
lightning_gpt/chat.py renders it.
"""

from __future__ import annotations

from importlib import resources

from lightning_gpt.chat import ASSISTANT, END_OF_TURN, ROLE_TOKENS, USER, chat_stop_ids
from lightning_gpt.tokenizer import (
    END_OF_TEXT,
    GPT2_PATTERN,
    GPT2_VOCAB_FILE,
    UNKNOWN,
    AnyTokenizer,
    BPETokenizer,
    CharTokenizer,
    Tokenizer,
    _load_ranks,
)

BREAK = "\u200b"  # a zero-width space: inside a special-token string, it keeps the tokenizer from matching it


def chat_template(special_tokens) -> str:
    """lightning_gpt/chat.py::render_conversation and render_prompt, in Jinja, for a tokenizer with these special
    tokens. The {% generation %} block marks what the project's loss mask marks (the assistant's text and its <|end|>),
    for return_assistant_tokens_mask=True.

    Content is rendered with each special-token string broken by BREAK after its first character, so that it encodes
    as text, never as a control token. After all the replacements none is left: each one only inserts BREAK, so any
    later match would hold a BREAK, which no special token does (and "<|name|>" strings cannot overlap themselves).
    """
    content = "message['content']" + "".join(
        f" | replace('{name}', '{name[0] + BREAK + name[1:]}')" for name in sorted(special_tokens)
    )
    assert all("'" not in name and len(name) > 1 for name in special_tokens)  # Jinja literals; something to break
    return (
        "{{- '" + END_OF_TEXT + "' -}}"
        "{%- for message in messages -%}"
        "{%- if message['role'] not in " + repr(sorted(ROLE_TOKENS)) + " -%}"
        "{{- raise_exception('unknown role ' + message['role'] + ': use system, user or assistant') -}}"
        "{%- endif -%}"
        "{%- set content = " + content + " -%}"
        "{{- '<|' + message['role'] + '|>' -}}"
        "{%- if message['role'] == 'assistant' -%}"
        "{%- generation -%}{{- content + '" + END_OF_TURN + "' -}}{%- endgeneration -%}"
        "{%- else -%}"
        "{{- content + '" + END_OF_TURN + "' -}}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '" + ASSISTANT + "' -}}{%- endif -%}"
    )


assert all(ROLE_TOKENS[role] == f"<|{role}|>" for role in ROLE_TOKENS)  # the template builds markers from roles


def gpt2_backend():
    """GPT-2's BPE as a `tokenizers.Tokenizer` (its 50,256 ranks; the special tokens are added by the caller)."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks, _ = _load_ranks()  # checks the file's sha256

    class ShippedVocabulary(TikTokenConverter):
        @staticmethod
        def load_tiktoken_bpe(_path: str) -> dict[bytes, int]:
            return ranks  # tiktoken's own loader would copy the file into its download cache

    vocab_file = str(resources.files("lightning_gpt").joinpath("assets").joinpath(GPT2_VOCAB_FILE))
    return ShippedVocabulary(vocab_file=vocab_file, pattern=GPT2_PATTERN).converted()


def char_backend(tokenizer: CharTokenizer):
    """A WordLevel model over the characters: every character is its own pre-token (the regex `[\\s\\S]` matches
    one code point, line breaks included), so it encodes to its id or to <|unk|>, as CharTokenizer.encode does; the
    Fuse decoder joins them back without spaces."""
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    vocab = {c: i for i, c in enumerate(tokenizer.chars)} | tokenizer.special_tokens
    backend = HFTokenizer(models.WordLevel(vocab, unk_token=UNKNOWN))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return backend


def backend_of(tokenizer: AnyTokenizer):
    """The `tokenizers.Tokenizer` that encodes ordinary text into `tokenizer`'s ids (special tokens not yet added)."""
    from tokenizers import Tokenizer as HFTokenizer

    if isinstance(tokenizer, Tokenizer):
        return gpt2_backend()
    if isinstance(tokenizer, BPETokenizer):
        return HFTokenizer.from_str(tokenizer.tokenizer_json)  # the very tokenizer that encodes it
    if isinstance(tokenizer, CharTokenizer):
        return char_backend(tokenizer)
    raise TypeError(f"no Hugging Face form for a {type(tokenizer).__name__}")


def hf_tokenizer(tokenizer: AnyTokenizer, chat: bool, max_length: int):
    """A `PreTrainedTokenizerFast` with `tokenizer`'s ids, plus its chat_template when `chat`."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    backend = backend_of(tokenizer)
    # Added after the learned vocabulary, in id order: <|endoftext|> (GPT-2: 50256), then the chat tokens.
    specials = sorted(tokenizer.special_tokens, key=tokenizer.special_tokens.get)
    backend.add_special_tokens([AddedToken(name, normalized=False, special=True) for name in specials])
    for name, expected in tokenizer.special_tokens.items():
        if backend.token_to_id(name) != expected:
            raise RuntimeError(f"exported tokenizer gives {name} id {backend.token_to_id(name)}, not {expected}")
    end = END_OF_TURN if chat else END_OF_TEXT
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=END_OF_TEXT,
        eos_token=end,
        pad_token=END_OF_TEXT,
        unk_token=UNKNOWN if UNKNOWN in tokenizer.special_tokens else None,
        model_max_length=max_length,
        clean_up_tokenization_spaces=False,  # decode like tiktoken: no space fixing
        split_special_tokens=not chat,
        chat_template=chat_template(tokenizer.special_tokens) if chat else None,
    )


def stop_token_ids(tokenizer: AnyTokenizer, chat: bool) -> list[int]:
    """The ids that end an answer, as lightning_gpt/chat.py::chat_stop_ids; <|end|> first (the eos)."""
    if not chat:
        return [tokenizer.eot_id]

    ids = chat_stop_ids(tokenizer)
    assert ids[0] == tokenizer.token_id(END_OF_TURN) and tokenizer.token_id(USER) in ids
    return list(ids)
