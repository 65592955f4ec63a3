"""The tokenizers: GPT-2 BPE through tiktoken, loaded from the vocabulary file shipped in the package (no network),
and two trained on your own text (`char`, `bpe-N`). Each turns into plain data (`to_data`: str, int, lists) and back
(`tokenizer_from_data`), which is how a checkpoint carries the tokenizer it was trained with."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable
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
        check_text(text)
        return self._encoding.encode_ordinary(text)

    def encode_batch(self, texts: list[str], num_threads: int | None = None) -> list[list[int]]:
        """Encodes on one thread per usable core (tiktoken releases the GIL); more threads than cores only contend."""
        for text in texts:
            check_text(text)
        return self._encoding.encode_ordinary_batch(texts, num_threads=num_threads or len(os.sched_getaffinity(0)))

    def decode(self, ids: list[int]) -> str:
        return self._encoding.decode(ids)

    def token_id(self, name: str) -> int:
        return self.special_tokens[name]

    def extra_special_tokens(self) -> list[str]:
        return [name for name in self.special_tokens if name != END_OF_TEXT]

    def with_special_tokens(self, names: Iterable[str]) -> Tokenizer:
        """This tokenizer plus `names` as special tokens after the ones it has (the chat stage adds four)."""
        return Tokenizer([*self.extra_special_tokens(), *names])

    def to_data(self) -> dict:
        return {"kind": "gpt2", "vocab_sha256": self._vocab_sha, "special_tokens": self.extra_special_tokens()}


UNKNOWN = "<|unk|>"


def check_text(text: str) -> None:
    """Refuses text that is no Unicode a file could hold (an unpaired surrogate, e.g. "\\ud800"), naming where."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise UserInputError(
            f"the text holds an unpaired surrogate {text[err.start]!r} at character {err.start}: it is not valid "
            "Unicode and cannot be encoded; decode the source with errors='replace' or fix it."
        ) from None


class _TrainedTokenizer:
    """What `CharTokenizer` and `BPETokenizer` share: special tokens numbered after the learned vocabulary
    (`<|endoftext|>` first), the fingerprint of the whole mapping, and decoding that renders specials by name."""

    kind = ""

    def __init__(self, base_size: int, fixed_special: tuple[str, ...], extra_special_tokens) -> None:
        special: dict[str, int] = {}
        for name in (*fixed_special, *extra_special_tokens):
            if name in special:
                raise UserInputError(f"special token {name!r} is listed twice; give each special token once.")
            special[name] = base_size + len(special)
        self.special_tokens = special
        self._base_size = base_size
        self._fixed = fixed_special
        self._names = {i: name for name, i in special.items()}

    @property
    def vocab_size(self) -> int:
        return self._base_size + len(self.special_tokens)

    @property
    def eot_id(self) -> int:
        return self.special_tokens[END_OF_TEXT]

    def token_id(self, name: str) -> int:
        return self.special_tokens[name]

    def extra_special_tokens(self) -> list[str]:
        return [name for name in self.special_tokens if name not in self._fixed]

    @cached_property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_data(), sort_keys=True).encode()).hexdigest()[:16]

    def encode_batch(self, texts: list[str], num_threads: int | None = None) -> list[list[int]]:
        return [self.encode(text) for text in texts]

    def decode(self, ids: list[int]) -> str:
        parts, run = [], []
        for i in ids:
            i = int(i)
            if i in self._names:
                parts.append(self._decode_base(run))
                parts.append(self._names[i])
                run = []
            else:
                run.append(i)
        parts.append(self._decode_base(run))
        return "".join(parts)

    def to_data(self) -> dict:
        raise NotImplementedError

    def _decode_base(self, ids: list[int]) -> str:
        raise NotImplementedError


class CharTokenizer(_TrainedTokenizer):
    """One token per character of the training text (sorted), then `<|endoftext|>`, `<|unk|>` and any extra special
    tokens. A character the training text lacks encodes as `<|unk|>`.

    Args:
        chars: the vocabulary's characters, each once.
        extra_special_tokens: names of special tokens to add after `<|endoftext|>` and `<|unk|>`.
    """

    kind = "char"

    def __init__(self, chars: str, extra_special_tokens: tuple[str, ...] | list[str] = ()) -> None:
        self.chars = "".join(sorted(set(chars)))
        check_text(self.chars)
        super().__init__(len(self.chars), (END_OF_TEXT, UNKNOWN), extra_special_tokens)
        self._ids = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def train(cls, texts: Iterable[str]) -> CharTokenizer:
        seen: set[str] = set()
        for text in texts:
            seen.update(text)
        return cls("".join(seen))

    def encode(self, text: str) -> list[int]:
        check_text(text)
        unknown = self.special_tokens[UNKNOWN]
        return [self._ids.get(c, unknown) for c in text]

    def _decode_base(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def with_special_tokens(self, names: Iterable[str]) -> CharTokenizer:
        return CharTokenizer(self.chars, [*self.extra_special_tokens(), *names])

    def to_data(self) -> dict:
        return {"kind": "char", "chars": self.chars, "special_tokens": self.extra_special_tokens()}


class BPETokenizer(_TrainedTokenizer):
    """A byte-level BPE trained with Hugging Face `tokenizers` (GPT-2's scheme: any text encodes, no unknown token),
    then `<|endoftext|>` and any extra special tokens. Special-token strings inside text are ordinary text, as with
    GPT-2, so a document cannot forge a role marker.

    Args:
        tokenizer_json: the trained `tokenizers.Tokenizer` as its JSON string.
        extra_special_tokens: names of special tokens to add after `<|endoftext|>`.
    """

    kind = "bpe"

    def __init__(self, tokenizer_json: str, extra_special_tokens: tuple[str, ...] | list[str] = ()) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        self.tokenizer_json = tokenizer_json
        self._hf = HFTokenizer.from_str(tokenizer_json)
        super().__init__(self._hf.get_vocab_size(with_added_tokens=True), (END_OF_TEXT,), extra_special_tokens)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        """Learns merges until `vocab_size` ids, `<|endoftext|>` included (fewer where the text runs out of pairs)."""
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size - 1,  # the last id is <|endoftext|>, as in GPT-2
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator(texts, trainer)
        return cls(hf.to_str())

    def encode(self, text: str) -> list[int]:
        check_text(text)
        return self._hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str], num_threads: int | None = None) -> list[list[int]]:
        for text in texts:
            check_text(text)
        return [e.ids for e in self._hf.encode_batch(texts, add_special_tokens=False)]  # parallel in Rust

    def _decode_base(self, ids: list[int]) -> str:
        return self._hf.decode(ids, skip_special_tokens=False) if ids else ""

    def with_special_tokens(self, names: Iterable[str]) -> BPETokenizer:
        return BPETokenizer(self.tokenizer_json, [*self.extra_special_tokens(), *names])

    def to_data(self) -> dict:
        return {"kind": "bpe", "tokenizer_json": self.tokenizer_json, "special_tokens": self.extra_special_tokens()}


AnyTokenizer = Tokenizer | CharTokenizer | BPETokenizer


def parse_tokenizer_spec(spec: str) -> tuple[str, int | None]:
    """("gpt2", None), ("char", None) or ("bpe", N) for --data.tokenizer; refuses anything else."""
    if spec in ("gpt2", "char"):
        return spec, None
    if spec.startswith("bpe-") and spec[4:].isdigit():
        size = int(spec[4:])
        if size >= 257:
            return "bpe", size
    raise UserInputError(
        f"--data.tokenizer {spec!r}: use gpt2 (GPT-2's BPE), char (the characters of the training text) or bpe-N "
        "(a byte-level BPE of N tokens trained on it, N at least 257: 256 bytes and <|endoftext|>), e.g. bpe-8192."
    )


def describe(tokenizer: AnyTokenizer) -> str:
    """One line for messages, e.g. "bpe (8004 ids, special tokens <|endoftext|> <|system|> ...)"."""
    specials = " ".join(tokenizer.special_tokens)
    return f"{tokenizer.to_data()['kind']} ({tokenizer.vocab_size} ids, special tokens {specials})"


def extends(tokenizer: AnyTokenizer, base: AnyTokenizer) -> bool:
    """Whether `tokenizer` is `base`, perhaps with special tokens added after its own: every id of `base` means the
    same in it (how the chat stage grows a pretrained model's tokenizer)."""
    ours, theirs = tokenizer.to_data(), base.to_data()
    ours.pop("special_tokens"), theirs.pop("special_tokens")
    return ours == theirs and all(tokenizer.special_tokens.get(name) == i for name, i in base.special_tokens.items())


def train_tokenizer(spec: str, texts: Iterable[str]) -> AnyTokenizer:
    """A tokenizer for --data.tokenizer `spec`, trained on `texts` where it is learned."""
    kind, size = parse_tokenizer_spec(spec)
    if kind == "char":
        return CharTokenizer.train(texts)
    if kind == "bpe":
        return BPETokenizer.train(texts, size)
    return Tokenizer()


def tokenizer_from_data(data: dict) -> AnyTokenizer:
    """Rebuilds a tokenizer from its `to_data()` (as stored in a checkpoint)."""
    kind = data.get("kind") if isinstance(data, dict) else None
    special = list(data.get("special_tokens", [])) if isinstance(data, dict) else []
    if kind == "gpt2":
        return Tokenizer(special)
    if kind == "char":
        return CharTokenizer(data["chars"], special)
    if kind == "bpe":
        return BPETokenizer(data["tokenizer_json"], special)
    raise UserInputError(f"unknown tokenizer data (kind {kind!r}); expected gpt2, char or bpe.")
