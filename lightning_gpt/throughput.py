"""How a batch is counted (ThroughputMonitor's samples and items, the module's tokens and FLOPs): samples are rows,
tokens are the real ones. Chat and preference batches pad their rows to one width; their loaders put the count of
real tokens last in the batch as a Python int (data_modules/chat_messages.py, data_modules/ultrafeedback.py), so
reading it is no device sync."""

from __future__ import annotations


def batch_windows(batch) -> int:
    return batch[0].shape[0]


def batch_tokens(batch) -> int:
    """Tokens the model reads in this batch, padding excluded."""
    if len(batch) > 3 and isinstance(batch[-1], int):
        return batch[-1]
    return batch[0].numel()
