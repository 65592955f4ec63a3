"""What the pretraining DataModules (WikiText103, TextFiles) share: documents joined into one stream of tokens per
split, an end-of-text after each, served as windows of `block_size` tokens; words, characters and bytes counted on
the way, for word perplexity and bits per byte."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset

from data_modules.token_cache import batched, token_dtype
from data_modules.windows import EvalWindows, LazyArray, ResumableWindowSampler, TrainWindows
from lightning_gpt.errors import UserInputError
from lightning_gpt.tokenizer import AnyTokenizer

# --- encoding ------------------------------------------------------------------------------------------------------


def check_text_column(rows, column: str, path: str) -> None:
    """Refuses a text column that does not hold strings, naming --data.text_column."""
    dtype = getattr(rows.features[column], "dtype", None)
    if dtype in ("binary", "large_binary"):
        raise UserInputError(
            f"--data.path {path}: column {column!r} holds bytes (binary), not text; store it as "
            "UTF-8 strings, or set --data.text_column to the column with the text."
        )
    if dtype not in ("string", "large_string"):
        raise UserInputError(
            f"--data.path {path}: column {column!r} holds {rows.features[column]}, "
            "not text; set --data.text_column to the column with the text."
        )


def count_text(texts: Iterable[str], stats: dict, extra_words: int = 0) -> Iterator[str]:
    """Passes texts on, adding their words (whitespace-separated, plus `extra_words` each: the end of line or of text
    the model also predicts), characters and UTF-8 bytes to `stats`."""
    for key in ("words", "chars", "bytes"):
        stats.setdefault(key, 0)
    for text in texts:
        stats["words"] += len(text.split()) + extra_words
        stats["chars"] += len(text)
        stats["bytes"] += len(text.encode("utf-8"))
        yield text


def stream_dtypes(vocab_size: int) -> dict[str, np.dtype]:
    """A stream's cache holds one array: the token ids."""
    return {"tokens": token_dtype(vocab_size)}


def encode_documents(documents: Iterable[str], tokenizer: AnyTokenizer, stats: dict) -> Iterator[dict[str, np.ndarray]]:
    """Chunks of the stream: each document's token ids, then end-of-text. Counts the documents into `stats`."""
    eot = tokenizer.eot_id
    for docs in batched(documents, 256):
        flat: list[int] = []
        for ids in tokenizer.encode_batch(docs):  # BPE on several threads
            flat.extend(ids)
            flat.append(eot)
        stats["documents"] = stats.get("documents", 0) + len(docs)
        yield {"tokens": np.array(flat, dtype=np.int64)}


def text_stats(meta: dict) -> dict | None:
    """Words, bytes, characters (None in caches written before they were counted) and predicted tokens of a cached
    split, for word-level perplexity, bits per byte and tokens per character."""
    stats = meta.get("stats", {})
    if "words" not in stats:
        return None
    targets = meta["arrays"]["tokens"]["length"] - 1
    return {"words": stats["words"], "bytes": stats["bytes"], "chars": stats.get("chars"), "targets": targets}


# --- windows ---------------------------------------------------------------------------------------------------------


def train_windows(base: Path, meta: dict, block_size: int, sampler_args: dict, split: str):
    """Every window of the stream, in the resumable order of a `ResumableWindowSampler`: (dataset, sampler)."""
    tokens = LazyArray(base, meta)
    if len(tokens) <= block_size:  # one window takes block_size + 1 tokens (its inputs and the next token)
        fits = 2 ** int(math.log2(len(tokens) - 1)) if len(tokens) > 2 else None
        advice = f"--model.block_size {fits} (or less) fits it" if fits else "it cannot hold one window"
        raise UserInputError(
            f"split {split!r} has {len(tokens)} tokens to train on; one training window of --model.block_size "
            f"{block_size} takes {block_size + 1}: {advice}, or add text."
        )
    dataset = TrainWindows(tokens, block_size)
    # Every target of a training window is scored: block_size targets per item.
    return dataset, ResumableWindowSampler(dataset, item_targets=block_size, **sampler_args)


def sample_windows(base: Path, meta: dict, block_size: int, count: int, seed: int) -> Subset:
    """`count` training windows at offsets drawn from `seed`: the same ones at every validation."""
    windows = TrainWindows(LazyArray(base, meta), block_size)
    offsets = torch.randint(len(windows), (count,), generator=torch.Generator().manual_seed(seed))
    return Subset(windows, offsets.tolist())


def eval_windows(base: Path, meta: dict, block_size: int, pad_id: int) -> EvalWindows:
    """The stream cut into consecutive windows, each token predicted once."""
    return EvalWindows(LazyArray(base, meta), block_size, pad_id=pad_id)
