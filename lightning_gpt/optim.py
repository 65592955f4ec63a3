"""AdamW with decay/no-decay groups, and linear warmup into cosine decay, from torch.optim's own schedulers."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR


def adamw_warmup_cosine(
    parameters: Iterable[torch.nn.Parameter],
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float,
    fused: bool,
) -> tuple[torch.optim.AdamW, SequentialLR]:
    """Decay on matrices and embeddings, never on norm gains; the schedule is stepped once per optimizer step."""
    params = [p for p in parameters if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=fused)
    warmup = min(warmup_steps, max(total_steps - 1, 0))  # a run shorter than its warmup still ends in decay
    schedule = SequentialLR(
        optimizer,
        [
            LinearLR(optimizer, start_factor=1.0 / (warmup + 1), total_iters=warmup),
            CosineAnnealingLR(optimizer, T_max=max(total_steps - warmup, 1), eta_min=lr * min_lr_ratio),
        ],
        milestones=[warmup],
    )
    return optimizer, schedule
