"""`--data.tokenizer`: which tokenizer a DataModule encodes its data with, decided here for every DataModule.

- gpt2 (or unset): GPT-2's BPE, shipped with the package.
- char, bpe-N: trained on the training documents (never the held-out ones) of a pretraining DataModule (WikiText103,
  TextFiles), once, and cached beside the token caches.
- the path of a checkpoint: the tokenizer that checkpoint was trained with (lightning_gpt/cli.py fills this in from
  --model.init_from, or from a --ckpt_path file, when the flag is unset).

The chat DataModules (ChatMessages, UltraChat200k, ContextChats, UltraFeedback) fine-tune a model that exists: its
token ids must mean what they meant in pretraining. So they train no tokenizer (char and bpe-N are refused) and add
the chat tokens `<|system|> <|user|> <|assistant|> <|end|>` after the tokenizer's own ids where it lacks them.

The tokenizers themselves are lightning_gpt/tokenizer.py's; reading a checkpoint's is lightning_gpt/checkpoint.py's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from pathlib import Path

from lightning_gpt.atomic import write_atomic
from lightning_gpt.chat import chat_tokenizer
from lightning_gpt.checkpoint import tokenizer_of_checkpoint
from lightning_gpt.errors import UserInputError
from lightning_gpt.tokenizer import AnyTokenizer, Tokenizer, parse_tokenizer_spec, tokenizer_from_data, train_tokenizer

TRAINED = ("char", "bpe")  # the kinds learned from the data


def is_tokenizer_kind(spec: str) -> bool:
    """Whether a --data.tokenizer value names a kind (gpt2, char, bpe-N) rather than a checkpoint to take it from."""
    return spec in ("gpt2", "char") or spec.startswith("bpe-")


class TokenizerSetting:
    """One DataModule's `--data.tokenizer`: a bad value is refused when the DataModule is built, the model's
    vocabulary is known before any data is read, and the tokenizer is built on first use.

    Args:
        spec: the flag's value: gpt2, char, bpe-N, or the path of a checkpoint; None means gpt2.
        chat: a chat DataModule's: add the chat tokens, and refuse a kind that is trained.
    """

    def __init__(self, spec: str | None, chat: bool = False) -> None:
        self.spec = spec or "gpt2"
        self.chat = chat
        self.checkpoint: tuple[AnyTokenizer, int] | None = None  # a checkpoint's tokenizer and model vocabulary
        self.kind, self.size = "checkpoint", None
        if not is_tokenizer_kind(self.spec):
            self.checkpoint = tokenizer_of_checkpoint(self.spec, flag="--data.tokenizer")
        elif chat and self.spec != "gpt2":
            raise UserInputError(
                f"--data.tokenizer {spec}: chat data trains no tokenizer, it uses the one of the model it fine-tunes. "
                f"Pretrain with --data.tokenizer {spec}, then pass --model.init_from PRETRAIN.ckpt (its tokenizer is "
                "taken when --data.tokenizer is unset) or --data.tokenizer PRETRAIN.ckpt."
            )
        else:
            self.kind, self.size = parse_tokenizer_spec(self.spec)

    @property
    def trains(self) -> bool:
        """Whether the tokenizer is learned from the data (char, bpe-N)."""
        return self.kind in TRAINED

    def planned_vocab_size(self, tokenizer: Callable[[], AnyTokenizer]) -> int:
        """The model's vocabulary, known when the DataModule is built (the CLI links it to --model.vocab_size before
        prepare_data runs). `tokenizer` builds the tokenizer, called only where the size depends on it."""
        if self.kind == "bpe":  # N ids whatever it learns (fewer merges leave rows unused): nothing trained yet
            return self.size
        own = tokenizer().vocab_size  # char: only the data says, so its characters are read now
        # A checkpoint's: at least its model's vocabulary (a bpe-N that learned fewer than N ids leaves rows unused).
        return max(own, self.checkpoint[1]) if self.checkpoint else own

    def build(
        self, cached_at: Callable[[], Path], documents: Callable[[], AbstractContextManager[Iterable[str]]]
    ) -> AnyTokenizer:
        """The tokenizer. For a trained kind, `cached_at` says where it is cached and `documents` opens the
        training documents it is trained on when that file is missing (neither is called otherwise)."""
        if self.checkpoint is not None:
            base = self.checkpoint[0]
        elif self.trains:
            base = self._trained(cached_at(), documents)
        else:
            base = None  # GPT-2's
        if self.chat:
            return chat_tokenizer(base)
        return Tokenizer() if base is None else base

    def _trained(self, path: Path, documents: Callable[[], AbstractContextManager[Iterable[str]]]) -> AnyTokenizer:
        if path.is_file():
            return tokenizer_from_data(json.loads(path.read_text(encoding="utf-8")))
        with documents() as texts:
            tokenizer = train_tokenizer(self.spec, texts)
        write_atomic(path, json.dumps(tokenizer.to_data(), ensure_ascii=False))
        return tokenizer
