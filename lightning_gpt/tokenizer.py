"""GPT-2 BPE through tiktoken, loaded from the vocabulary file shipped in the package (no network)."""

from __future__ import annotations

import base64
import hashlib
import os
from functools import cached_property
from importlib import resources

import tiktoken

from lightning_gpt.errors import UserInputError

GPT2_VOCAB_FILE = "gpt2.tiktoken"
# sha256 of tiktoken's r50k_base vocabulary (the same bytes as openai-whisper's whisper/assets/gpt2.tiktoken).
GPT2_VOCAB_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
# The pre-tokenizer regex of GPT-2 (tiktoken_ext.openai_public.r50k_pat_str).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
END_OF_TEXT = "<|endoftext|>"
GPT2_BASE_VOCAB = 50257  # 50,256 merges + <|endoftext|>


def _load_ranks() -> tuple[dict[bytes, int], str]:
    data = resources.files("lightning_gpt").joinpath("assets").joinpath(GPT2_VOCAB_FILE).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != GPT2_VOCAB_SHA256:
        raise UserInputError(
            f"lightning_gpt/assets/{GPT2_VOCAB_FILE} has sha256 {digest}, expected {GPT2_VOCAB_SHA256}: "
            "the shipped GPT-2 vocabulary is damaged; reinstall lightning-gpt."
        )
    ranks = {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in data.splitlines() if line)}
    return ranks, digest


class Tokenizer:
    """GPT-2 BPE plus optional special tokens numbered after the GPT-2 vocabulary (the chat stage adds some).

    Args:
        extra_special_tokens: names of special tokens to add, in order; they get ids 50257, 50258, ...
    """

    def __init__(self, extra_special_tokens: tuple[str, ...] | list[str] = ()) -> None:
        ranks, vocab_sha = _load_ranks()
        special = {END_OF_TEXT: GPT2_BASE_VOCAB - 1}
        for offset, name in enumerate(extra_special_tokens):
            if name in special:
                raise UserInputError(f"special token {name!r} is listed twice; give each special token once.")
            special[name] = GPT2_BASE_VOCAB + offset
        self.special_tokens = special
        self._vocab_sha = vocab_sha
        self._encoding = tiktoken.Encoding(
            name="gpt2" if not extra_special_tokens else "gpt2+special",
            pat_str=GPT2_PATTERN,
            mergeable_ranks=ranks,
            special_tokens=special,
        )

    @property
    def vocab_size(self) -> int:
        """Number of token ids, special tokens included (50,257 for plain GPT-2)."""
        return self._encoding.n_vocab

    @property
    def eot_id(self) -> int:
        return self.special_tokens[END_OF_TEXT]

    @cached_property
    def fingerprint(self) -> str:
        """Identifies the exact token mapping; token caches are keyed by it."""
        names = ",".join(f"{name}={i}" for name, i in sorted(self.special_tokens.items(), key=lambda kv: kv[1]))
        return hashlib.sha256(f"{self._vocab_sha}|{names}".encode()).hexdigest()[:16]

    def encode(self, text: str) -> list[int]:
        """Encodes plain text; special-token strings inside it are treated as ordinary text."""
        return self._encoding.encode_ordinary(text)

    def encode_batch(self, texts: list[str], num_threads: int | None = None) -> list[list[int]]:
        """Encodes on one thread per usable core (tiktoken releases the GIL); more threads than cores only contend."""
        return self._encoding.encode_ordinary_batch(texts, num_threads=num_threads or len(os.sched_getaffinity(0)))

    def decode(self, ids: list[int]) -> str:
        return self._encoding.decode(ids)

    def token_id(self, name: str) -> int:
        return self.special_tokens[name]
