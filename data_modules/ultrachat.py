"""UltraChat-200k (HuggingFaceH4/ultrachat_200k): the generic chat DataModule with UltraChat's id and split names."""

from __future__ import annotations

from data_modules.chat_messages import (  # noqa: F401  (also imported from here by older code and tests)
    ChatBatches,
    ChatMessages,
    eval_batches,
    length_grouped_batches,
    padding_waste,
)


class UltraChat200k(ChatMessages):
    """UltraChat-200k conversations through the chat template; loss on assistant turns only.

    Args:
        path: Hugging Face dataset id, or a local folder in the hub's layout.
        train_split: the split trained on.
        val_split: the split validated on. None (the default), or the train split itself: validate on
            `val_fraction` of the train split's conversations, held out from training.
        test_split: the split tested on (`test` only; validation never reads it).
        **kwargs: see `ChatMessages` (name, messages_column, max_bad_fraction, val_fraction, tokenizer) and
            `TokenDataModule` (block_size, batch_size, num_workers, cache_dir, seed).
    """

    def __init__(
        self,
        path: str = "HuggingFaceH4/ultrachat_200k",
        train_split: str = "train_sft",
        val_split: str | None = None,
        test_split: str = "test_sft",
        **kwargs,
    ) -> None:
        super().__init__(path=path, train_split=train_split, val_split=val_split, test_split=test_split, **kwargs)
