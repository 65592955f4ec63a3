"""The project's tokenizer as a Hugging Face fast tokenizer: GPT-2 BPE from the shipped .tiktoken file, the same
special-token ids, and for chat models a Jinja chat template that renders exactly like lightning_gpt/chat.py.

Imported only by `lightning-gpt export` (it needs transformers).

One difference cannot be avoided: Hugging Face tokenizes a chat template's output as one string, so special-token
strings must be matched in text for the template to work, while the project never matches them (its encode treats
"<|endoftext|>" typed in text as ordinary text). A plain model's tokenizer is saved with split_special_tokens=True and
so encodes every text exactly like the project; a chat model's is saved with split_special_tokens=False (Hugging
Face's default) so that apply_chat_template works, and matches the project on text holding special-token strings
only when called with split_special_tokens=True.
"""

from __future__ import annotations

from importlib import resources

from lightning_gpt.chat import ASSISTANT, END_OF_TURN, ROLE_TOKENS, USER
from lightning_gpt.tokenizer import END_OF_TEXT, GPT2_PATTERN, GPT2_VOCAB_FILE, Tokenizer, _load_ranks

# lightning_gpt/chat.py::render_conversation and render_prompt, in Jinja. The {% generation %} block marks what the
# project's loss mask marks (the assistant's text and its <|end|>), for return_assistant_tokens_mask=True.
CHAT_TEMPLATE = (
    "{{- '" + END_OF_TEXT + "' -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] not in " + repr(sorted(ROLE_TOKENS)) + " -%}"
    "{{- raise_exception('unknown role ' + message['role'] + ': use system, user or assistant') -}}"
    "{%- endif -%}"
    "{{- '<|' + message['role'] + '|>' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- message['content'] + '" + END_OF_TURN + "' -}}{%- endgeneration -%}"
    "{%- else -%}"
    "{{- message['content'] + '" + END_OF_TURN + "' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '" + ASSISTANT + "' -}}{%- endif -%}"
)
assert all(ROLE_TOKENS[role] == f"<|{role}|>" for role in ROLE_TOKENS)  # the template builds markers from roles


def hf_tokenizer(tokenizer: Tokenizer, chat: bool, max_length: int):
    """A `PreTrainedTokenizerFast` with `tokenizer`'s ids, plus CHAT_TEMPLATE when `chat`."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks, _ = _load_ranks()  # checks the file's sha256

    class ShippedVocabulary(TikTokenConverter):
        @staticmethod
        def load_tiktoken_bpe(_path: str) -> dict[bytes, int]:
            return ranks  # tiktoken's own loader would copy the file into its download cache

    vocab_file = str(resources.files("lightning_gpt").joinpath("assets").joinpath(GPT2_VOCAB_FILE))
    backend = ShippedVocabulary(vocab_file=vocab_file, pattern=GPT2_PATTERN).converted()
    # Added after the 50,256 BPE ranks, in id order: <|endoftext|> 50256, then the chat tokens from 50257.
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
        unk_token=None,
        model_max_length=max_length,
        clean_up_tokenization_spaces=False,  # decode like tiktoken: no space fixing
        split_special_tokens=not chat,
        chat_template=CHAT_TEMPLATE if chat else None,
    )


def stop_token_ids(tokenizer: Tokenizer, chat: bool) -> list[int]:
    """The ids that end an answer, as lightning_gpt/commands.py::chat_stop_ids; <|end|> first (the eos)."""
    if not chat:
        return [tokenizer.eot_id]
    from lightning_gpt.commands import chat_stop_ids

    ids = chat_stop_ids(tokenizer)
    assert ids[0] == tokenizer.token_id(END_OF_TURN) and tokenizer.token_id(USER) in ids
    return list(ids)
