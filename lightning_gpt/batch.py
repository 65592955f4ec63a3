"""One batch, with named parts: what every DataModule yields and every training module reads.

A language-model batch is `inputs` and `targets`; a preference batch is 2B rows, the chosen answers first, then the
rejected ones in the same pair order (`data_modules/ultrafeedback.py`). Training batches also say how many targets
(or pairs) the whole optimizer step holds, over every accumulated micro-batch and every rank, since the loss is a
mean over those; padded batches say how many of their tokens are real.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass
class Batch:
    inputs: torch.Tensor
    """(B, T) token ids."""
    targets: torch.Tensor
    """(B, T) the token each position predicts; IGNORE_INDEX where nothing is scored (prompts, padding)."""
    step_count: torch.Tensor | None = None
    """What the loss of the whole optimizer step divides by (scored targets, or pairs), a 0-d tensor; None for an
    evaluation batch or one made by hand, whose loss is its own mean."""
    real_tokens: int | None = None
    """Inputs that are not padding, a host int (read without a device sync); None when no position is padding."""
    pair_ids: torch.Tensor | None = None
    """(B / 2,) each pair's index in its dataset, for a preference batch (reference log-probabilities kept ahead)."""

    @property
    def rows(self) -> int:
        return self.inputs.shape[0]

    @property
    def tokens(self) -> int:
        """Tokens the model reads, padding excluded."""
        return self.inputs.numel() if self.real_tokens is None else self.real_tokens

    def pin_memory(self) -> Batch:
        """The DataLoader's pinned copy (with pin_memory=True it calls this on custom batches)."""
        pinned = {name: getattr(self, name) for name in ("inputs", "targets", "step_count", "pair_ids")}
        return replace(self, **{k: v.pin_memory() for k, v in pinned.items() if v is not None})


def batch_rows(batch: Batch) -> int:
    """ThroughputMonitor's samples of a batch: its rows."""
    return batch.rows


def batch_tokens(batch: Batch) -> int:
    """ThroughputMonitor's items of a batch: its real tokens."""
    return batch.tokens


def collate(items: list[tuple[torch.Tensor, ...]]) -> Batch:
    """A Batch of (inputs, targets[, step_count]) items of one sequence each (the window datasets)."""
    inputs = torch.stack([item[0] for item in items])
    targets = torch.stack([item[1] for item in items])
    step_count = items[0][2] if len(items[0]) > 2 else None  # the same for every item of a batch
    return Batch(inputs, targets, step_count)
