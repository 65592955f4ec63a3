"""How Lightning's ThroughputMonitor counts a batch of (x, y) windows: samples are windows, items are tokens."""

from __future__ import annotations


def batch_windows(batch) -> int:
    return batch[0].shape[0]


def batch_tokens(batch) -> int:
    return batch[0].numel()
