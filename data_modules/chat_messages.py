"""Any chat dataset with a `messages` column (a list of {role, content}: an optional system turn, then user and
assistant turns): conversations rendered through the chat template, batched by length with right padding. The
batches here are also those of UltraChat200k and ContextChats; the encoding they share is chat_encoding.py's.

Padded, not packed (docs/design.md says why); the fraction of padded positions is logged as `padding_waste`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from data_modules.base import TokenDataModule
from data_modules.chat_encoding import ChatEncoding
from data_modules.tokenizer_setting import TokenizerSetting
from data_modules.windows import LazyArray, ResumableShuffleSampler
from lightning_gpt.batch import Batch
from lightning_gpt.model import IGNORE_INDEX

log = logging.getLogger(__name__)
EVAL_SEED = 0  # evaluation batches come in one fixed random order, the same at every validation and in every run


def length_grouped_batches(lengths: np.ndarray, batch_size: int, seed: int | None, group: int = 64) -> list[np.ndarray]:
    """Batches of sample indices with similar lengths. With a seed: samples are shuffled, then sorted by length
    within groups of `group` batches, so batches stay random but padding stays small. Without: sorted overall."""
    if seed is None:
        order = np.argsort(-lengths, kind="stable")
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    order = np.random.default_rng(seed).permutation(len(lengths))
    batches = []
    for start in range(0, len(order), group * batch_size):
        chunk = order[start : start + group * batch_size]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk) - batch_size + 1, batch_size)]
    return batches


def padding_waste(lengths: np.ndarray, batches: list[np.ndarray]) -> float:
    """Fraction of the model's input positions that are padding."""
    real = sum(int((lengths[b] - 1).sum()) for b in batches)
    padded = sum(len(b) * int(lengths[b].max() - 1) for b in batches)
    return 1.0 - real / padded if padded else 0.0


def eval_batches(lengths: np.ndarray, batch_size: int, seed: int = EVAL_SEED, group: int = 64) -> list[np.ndarray]:
    """Every sample once, in batches of similar lengths (little padding), the batches in a fixed random order: the
    first N batches, all that `limit_val_batches` evaluates, are a random sample of all lengths, not the longest."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    batches = []
    for start in range(0, len(order), group * batch_size):
        chunk = order[start : start + group * batch_size]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def sample_batches(lengths: np.ndarray, batch_size: int, batches: int, seed: int) -> list[np.ndarray]:
    """At most `batches` batches of a fixed random sample of `batches * batch_size` samples (all of them if there are
    fewer), batched by length like `eval_batches`. The samples are drawn one by one, not as whole batches: a batch
    holds similar lengths, so N drawn batches would be N draws of a length, and their mean length far from the
    split's."""
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(len(lengths), size=min(len(lengths), batches * batch_size), replace=False))
    return [picked[b] for b in eval_batches(lengths[picked], batch_size, seed=seed)]


# Batch widths are rounded up to a multiple of this: tensor-core friendly shapes, and few distinct ones for a compiled
# model (with dynamic shapes it compiles 2 graphs whatever the widths; tests/lightning_gpt/test_compile.py counts them).
WIDTH_MULTIPLE = 64


def padded_width(width: int, max_width: int) -> int:
    """`width` (<= max_width: samples are cut to the context) rounded up to a multiple of WIDTH_MULTIPLE, but never
    past `max_width` (the model's context)."""
    return min(-(-width // WIDTH_MULTIPLE) * WIDTH_MULTIPLE, max_width)


class ChatBatches(Dataset):
    """Item b is one whole batch: x (B, L) input ids and y (B, L) targets, L = longest sample in the batch - 1,
    rounded up to a multiple of WIDTH_MULTIPLE. Targets are IGNORE_INDEX off the loss mask and on padding."""

    def __init__(
        self, base: Path, meta: dict, lengths: np.ndarray, batches: list[np.ndarray], pad_id: int, max_width: int
    ) -> None:
        self.tokens, self.mask = LazyArray(base, meta, "tokens"), LazyArray(base, meta, "mask")
        self.lengths = lengths
        self.offsets = np.cumsum(self.lengths) - self.lengths
        self.batches, self.pad_id, self.max_width = batches, pad_id, max_width

    def __len__(self) -> int:
        return len(self.batches)

    def batch_targets(self) -> np.ndarray:
        """Scored targets of each batch: the loss mask summed over each sample's positions 1..n-1."""
        scored = self.mask.values.astype(np.int64)
        per_sample = np.add.reduceat(scored, self.offsets) - scored[self.offsets]  # a sample's first token is no target
        return np.array([int(per_sample[b].sum()) for b in self.batches], dtype=np.int64)

    def __getitem__(self, key: int | tuple[int, int]) -> Batch:
        """A batch index, or (index, step_targets) from a training sampler that counts targets."""
        index, step_targets = key if isinstance(key, tuple) else (key, None)
        samples = self.batches[index]
        width = padded_width(int(self.lengths[samples].max()) - 1, self.max_width)
        x = torch.full((len(samples), width), self.pad_id, dtype=torch.long)
        y = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
        for row, sample in enumerate(samples):
            start, n = int(self.offsets[sample]), int(self.lengths[sample])
            ids = torch.from_numpy(self.tokens.values[start : start + n].astype(np.int64))
            keep = torch.from_numpy(self.mask.values[start + 1 : start + n].astype(bool))
            x[row, : n - 1] = ids[:-1]
            y[row, : n - 1] = torch.where(keep, ids[1:], IGNORE_INDEX)
        real_tokens = int(self.lengths[samples].sum()) - len(samples)  # each sample's inputs: all but its last token
        step_count = None if step_targets is None else torch.tensor(step_targets)
        return Batch(x, y, step_count, real_tokens)


# --- the chat DataModules' datasets (ChatMessages, UltraChat200k, ContextChats) --------------------------------------


def chat_lengths(base: Path, meta: dict) -> np.ndarray:
    """Each cached sample's length."""
    return np.array(LazyArray(base, meta, "lengths").values, dtype=np.int64)


def train_chats(base: Path, meta: dict, batch_size: int, seed: int, pad_id: int, max_width: int, sampler_args: dict):
    """Training batches of similar lengths in a seeded order, the sampler that takes them in a resumable order,
    and their padding waste: (dataset, sampler, waste)."""
    lengths = chat_lengths(base, meta)
    batches = length_grouped_batches(lengths, batch_size, seed=seed)
    waste = padding_waste(lengths, batches)
    log.info(
        "training batches: %d of %d conversations, %.1f%% of positions are padding",
        *(len(batches), batch_size, 100 * waste),
    )
    dataset = ChatBatches(base, meta, lengths, batches, pad_id=pad_id, max_width=max_width)
    return dataset, ResumableShuffleSampler(dataset, item_targets=dataset.batch_targets(), **sampler_args), waste


def sample_chats(base: Path, meta: dict, batch_size: int, batches: int, seed: int, pad_id: int, max_width: int):
    """`batches` batches of a fixed sample of all lengths (`sample_batches`), drawn from `seed` + 1: another draw
    than the training order's."""
    lengths = chat_lengths(base, meta)
    sample = sample_batches(lengths, batch_size, batches, seed=seed + 1)
    return ChatBatches(base, meta, lengths, sample, pad_id=pad_id, max_width=max_width)


def eval_chats(base: Path, meta: dict, batch_size: int, pad_id: int, max_width: int) -> ChatBatches:
    """Every sample once (`eval_batches`)."""
    lengths = chat_lengths(base, meta)
    return ChatBatches(base, meta, lengths, eval_batches(lengths, batch_size), pad_id=pad_id, max_width=max_width)


class ChatMessages(TokenDataModule):
    """Conversations of any dataset with a messages column, through the chat template; loss on assistant turns only.

    Args:
        path: Hugging Face dataset id (e.g. HuggingFaceH4/no_robots), or a local folder in the hub's layout.
        name: the dataset's config name, if any.
        messages_column: the column holding each conversation as a list of {role, content}.
        max_bad_fraction: fail when more than this fraction of a split's rows is malformed.
        train_split: the split trained on.
        val_split: the split validated on. None (the default), or the train split itself: validate on
            `val_fraction` of the train split's conversations, held out from training.
        val_fraction: the share of the train split held out for validation when `val_split` is None or the train
            split. Rows are picked by a stable hash of `prompt_id` (of the messages where there is none): the same
            rows in every run, whatever the row order.
        test_split: the split tested on (`test` only; validation never reads it).
        tokenizer: the tokenizer, plus the chat tokens: gpt2, or the path of a checkpoint whose tokenizer to use.
            Unset: the one of --model.init_from (the CLI fills it in), else gpt2. Chat data trains none.
        **kwargs: see `TokenDataModule` (block_size, batch_size, num_workers, cache_dir, seed).
    """

    def __init__(
        self,
        path: str,
        name: str | None = None,
        messages_column: str = "messages",
        max_bad_fraction: float = 0.5,
        train_split: str = "train",
        val_split: str | None = None,
        val_fraction: float = 0.01,
        test_split: str = "test",
        tokenizer: str | None = None,
        **kwargs,
    ) -> None:
        self.messages_column, self.max_bad_fraction = messages_column, max_bad_fraction
        self.required_columns = (messages_column,)
        self.holds_out, self.val_fraction = val_split in (None, train_split), val_fraction
        super().__init__(
            path=path,
            name=name,
            train_split=train_split,
            val_split=val_split or train_split,
            test_split=test_split,
            tokenizer_setting=TokenizerSetting(tokenizer, chat=True),
            **kwargs,
        )
        self.chats = ChatEncoding(messages_column, max_bad_fraction, max_tokens=self.block_size + 1)
        self.padding_waste: float | None = None

    # --- conversations into a cache (data_modules/chat_encoding.py) ------------------------------------------

    def cache_variant(self, role: str | None = None) -> tuple[str, ...]:
        return (*self.chats.variant(), *self.holdout_variant(role))

    def held_out_rows(self, rows) -> np.ndarray:
        return self.chats.held_out_rows(rows, self.val_fraction)

    def array_dtypes(self) -> dict[str, np.dtype]:
        return self.chats.array_dtypes(self.vocab_size)

    def encode_rows(self, rows, split: str):
        part, stats = self.holdout_part(self.encode_role), self.encode_stats
        yield from self.chats.encode(rows, part, self.held_out_rows, self.val_fraction, self.tokenizer, stats)
        self.chats.check(stats, self.path, split, part, self.val_fraction)

    # --- batches of similar lengths, right-padded -------------------------------------------------------------

    def train_dataset(self, base: Path, meta: dict):
        pad, sampling = self.tokenizer.eot_id, self.sampler_args(1)
        dataset, sampler, self.padding_waste = train_chats(
            base, meta, self.batch_size, self.seed, pad, self.block_size, sampling
        )
        return dataset, sampler, None

    def train_sample_dataset(self, base: Path, meta: dict, batches: int):
        pad = self.tokenizer.eot_id
        return sample_chats(base, meta, self.eval_batch_size, batches, self.seed, pad, self.block_size), None

    def eval_dataset(self, base: Path, meta: dict):
        return eval_chats(base, meta, self.eval_batch_size, self.tokenizer.eot_id, self.block_size), None
