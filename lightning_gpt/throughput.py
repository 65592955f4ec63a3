"""How a batch is counted (ThroughputMonitor's samples and items, the module's tokens and FLOPs): samples are rows,
tokens are the real ones. A chat batch pads its rows to one width; its loader puts the count of real tokens in the
batch as a Python int (data_modules/chat_messages.py), so reading it is no device sync."""

from __future__ import annotations


def batch_windows(batch) -> int:
    return batch[0].shape[0]


def batch_tokens(batch) -> int:
    """Tokens the model reads in this batch, padding excluded."""
    if len(batch) > 3 and isinstance(batch[3], int):
        return batch[3]
    return batch[0].numel()
