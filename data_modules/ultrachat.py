"""UltraChat-200k (HuggingFaceH4/ultrachat_200k): conversations in a `messages` column, as `ChatMessages` reads any
such dataset, with UltraChat's id and split names."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_modules.base import TokenDataModule
from data_modules.chat_encoding import ChatEncoding
from data_modules.chat_messages import (  # noqa: F401  (ChatBatches ... also imported from here by older code and tests)
    ChatBatches,
    eval_batches,
    eval_chats,
    length_grouped_batches,
    padding_waste,
    sample_chats,
    train_chats,
)
from data_modules.tokenizer_setting import TokenizerSetting


class UltraChat200k(TokenDataModule):
    """UltraChat-200k conversations through the chat template; loss on assistant turns only.

    Args:
        path: Hugging Face dataset id, or a local folder in the hub's layout.
        train_split: the split trained on.
        val_split: the split validated on. None (the default), or the train split itself: validate on
            `val_fraction` of the train split's conversations, held out from training.
        test_split: the split tested on (`test` only; validation never reads it).
        name: the dataset's config name, if any.
        messages_column: the column holding each conversation as a list of {role, content}.
        max_bad_fraction: fail when more than this fraction of a split's rows is malformed.
        val_fraction: the share of the train split held out for validation when `val_split` is None or the train
            split. Rows are picked by a stable hash of `prompt_id` (of the messages where there is none): the same
            rows in every run, whatever the row order.
        tokenizer: the tokenizer, plus the chat tokens: gpt2, or the path of a checkpoint whose tokenizer to use.
            Unset: the one of --model.init_from (the CLI fills it in), else gpt2. Chat data trains none.
        **kwargs: see `TokenDataModule` (block_size, batch_size, num_workers, cache_dir, seed).
    """

    sample = "HuggingFaceH4/ultrachat_200k"  # what --data.path sample reads (lightning_gpt/sample_data/)

    def __init__(
        self,
        path: str = "HuggingFaceH4/ultrachat_200k",
        train_split: str = "train_sft",
        val_split: str | None = None,
        test_split: str = "test_sft",
        name: str | None = None,
        messages_column: str = "messages",
        max_bad_fraction: float = 0.5,
        val_fraction: float = 0.01,
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

    # --- batches of similar lengths, right-padded (data_modules/chat_messages.py) -----------------------------

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
