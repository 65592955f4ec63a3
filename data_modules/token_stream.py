"""The base of the pretraining DataModules: documents joined into one stream of tokens per split, one end-of-text
after each, served as windows of `block_size` tokens (WikiText103, TextFiles)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset

from data_modules.base import TokenDataModule
from data_modules.token_cache import batched, token_dtype
from data_modules.tokenizer_setting import TokenizerSetting
from data_modules.windows import EvalWindows, LazyArray, ResumableWindowSampler, TrainWindows
from lightning_gpt.errors import UserInputError


class TokenStream(TokenDataModule):
    """Windows over a stream of documents separated by end-of-text. Subclasses set `text_column` and say how rows
    become documents (`documents`), counting words and bytes into `encode_stats` for word perplexity and bits per
    byte (`count_text`)."""

    text_column: str = "text"

    def __init__(self, *, tokenizer: str | None = None, **kwargs) -> None:
        """
        Args:
            tokenizer: gpt2 (GPT-2's BPE, shipped), char (the characters of the training split, plus <|unk|>),
                bpe-N (a byte-level BPE of N tokens, trained on the training split with Hugging Face `tokenizers`),
                or the path of a checkpoint whose tokenizer to use. A trained one is cached beside the token caches
                and stored in every checkpoint. Unset: the one of --model.init_from (the CLI fills it in), else gpt2.
            **kwargs: see `TokenDataModule`.
        """
        super().__init__(tokenizer_setting=TokenizerSetting(tokenizer), **kwargs)

    def check_text_column(self, rows) -> None:
        """Refuses a text column that does not hold strings, naming --data.text_column."""
        dtype = getattr(rows.features[self.text_column], "dtype", None)
        if dtype in ("binary", "large_binary"):
            raise UserInputError(
                f"--data.path {self.path}: column {self.text_column!r} holds bytes (binary), not text; store it as "
                "UTF-8 strings, or set --data.text_column to the column with the text."
            )
        if dtype not in ("string", "large_string"):
            raise UserInputError(
                f"--data.path {self.path}: column {self.text_column!r} holds {rows.features[self.text_column]}, "
                "not text; set --data.text_column to the column with the text."
            )

    def count_text(self, texts: Iterable[str], extra_words: int = 0) -> Iterator[str]:
        """Passes texts on, adding their words (whitespace-separated, plus `extra_words` each: the end of line or
        of text the model also predicts), characters and UTF-8 bytes to `encode_stats`."""
        stats = getattr(self, "encode_stats", {})
        for key in ("words", "chars", "bytes"):
            stats.setdefault(key, 0)
        for text in texts:
            stats["words"] += len(text.split()) + extra_words
            stats["chars"] += len(text)
            stats["bytes"] += len(text.encode("utf-8"))
            yield text

    def array_dtypes(self) -> dict[str, np.dtype]:
        return {"tokens": token_dtype(self.vocab_size)}

    def encode_rows(self, rows, split: str) -> Iterator[dict[str, np.ndarray]]:
        eot = self.tokenizer.eot_id
        for docs in batched(self.documents(rows), 256):
            flat: list[int] = []
            for ids in self.tokenizer.encode_batch(docs):  # BPE on several threads
                flat.extend(ids)
                flat.append(eot)
            self.encode_stats["documents"] = self.encode_stats.get("documents", 0) + len(docs)
            yield {"tokens": np.array(flat, dtype=np.int64)}

    def tokens(self, role: str = "train") -> np.ndarray:
        """The cached token ids of a split ("train", "val" or "test"), memory-mapped; built if missing."""
        return LazyArray(*self._cache(role)).values

    def text_stats(self, role: str) -> dict | None:
        """Words, bytes, characters (None in caches written before they were counted) and predicted tokens of a split,
        for word-level perplexity, bits per byte and tokens per character."""
        base, meta = self._cache(role)
        stats = meta.get("stats", {})
        if "words" not in stats:
            return None
        targets = meta["arrays"]["tokens"]["length"] - 1
        return {"words": stats["words"], "bytes": stats["bytes"], "chars": stats.get("chars"), "targets": targets}

    def train_dataset(self, base: Path, meta: dict):
        tokens = LazyArray(base, meta)
        if len(tokens) <= 2 * self.block_size:
            raise UserInputError(
                f"split {self.splits['train']!r} has {len(tokens)} tokens, too few for windows of --data.block_size "
                f"{self.block_size}; use more data or a smaller block size."
            )
        dataset = TrainWindows(tokens, self.block_size)
        # Every target of a training window is scored: block_size targets per item.
        sampler = ResumableWindowSampler(dataset, item_targets=self.block_size, **self.sampler_args(self.batch_size))
        return dataset, sampler, self.batch_size

    def train_sample_dataset(self, base: Path, meta: dict, batches: int):
        windows = TrainWindows(LazyArray(base, meta), self.block_size)
        generator = torch.Generator().manual_seed(self.seed)
        offsets = torch.randint(len(windows), (batches * self.eval_batch_size,), generator=generator)
        return Subset(windows, offsets.tolist()), self.eval_batch_size

    def eval_dataset(self, base: Path, meta: dict):
        return EvalWindows(LazyArray(base, meta), self.block_size, pad_id=self.tokenizer.eot_id), self.eval_batch_size
