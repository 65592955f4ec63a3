"""WikiText-103 (Salesforce/wikitext, wikitext-103-raw-v1): rows are lines; articles start at a ` = Title = ` row."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset

from data_modules.base import TokenDataModule
from data_modules.token_cache import batched, token_dtype
from data_modules.windows import EvalWindows, LazyArray, ResumableWindowSampler, TrainWindows
from lightning_gpt.errors import UserInputError

_ARTICLE_TITLE = re.compile(r"^ = [^=].* = \n$")  # level-one heading; sections are ` = = Name = = `


def wikitext_articles(lines: Iterator[str]) -> Iterator[str]:
    """Joins line rows (each keeps its own newline) into whole articles."""
    article: list[str] = []
    for line in lines:
        if _ARTICLE_TITLE.match(line) and any(part.strip() for part in article):
            yield "".join(article)
            article = []
        article.append(line)
    if any(part.strip() for part in article):
        yield "".join(article)


class WikiText103(TokenDataModule):
    """WikiText-103 as one stream of tokens per split, articles separated by end-of-text, served as windows of
    `block_size` tokens.

    Args:
        path: Hugging Face dataset id, or a local folder in the hub's layout.
        name: the dataset's config name.
        text_column: the column holding the text lines.
        **kwargs: see `TokenDataModule` (block_size, batch_size, num_workers, cache_dir, seed, splits).
    """

    def __init__(
        self,
        path: str = "Salesforce/wikitext",
        name: str | None = "wikitext-103-raw-v1",
        text_column: str = "text",
        **kwargs,
    ) -> None:
        self.text_column = text_column
        self.required_columns = (text_column,)
        super().__init__(path=path, name=name, **kwargs)

    def cache_variant(self, role: str | None = None) -> tuple[str, ...]:
        return (f"text_column={self.text_column}",)

    def documents(self, rows) -> Iterator[str]:
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
        return wikitext_articles(self._counted_lines(rows))

    def _counted_lines(self, rows) -> Iterator[str]:
        """The rows, counting words and bytes for tokenizer-independent metrics (word perplexity, bits per byte).
        Words follow WikiText's own count: whitespace-separated tokens plus one end-of-line per row (217,646 on
        the validation split, as in Merity et al., 2016)."""
        stats = getattr(self, "encode_stats", {})
        stats.setdefault("words", 0)
        stats.setdefault("bytes", 0)
        for batch in rows.iter(batch_size=4096):
            for line in batch[self.text_column]:
                stats["words"] += len(line.split()) + 1
                stats["bytes"] += len(line.encode("utf-8"))
                yield line

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
        """Words, bytes and predicted tokens of a split, for word-level perplexity and bits per byte."""
        base, meta = self._cache(role)
        stats = meta.get("stats", {})
        if "words" not in stats:
            return None
        return {"words": stats["words"], "bytes": stats["bytes"], "targets": meta["arrays"]["tokens"]["length"] - 1}

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
