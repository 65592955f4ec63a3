"""What the benchmarks share: a Trainer that only trains (no logging, checkpoints, progress bar or validation),
so that a step's time is the step's."""

from __future__ import annotations

import lightning as L


def training_only_trainer(accelerator: str, precision: str, max_steps: int, callbacks: list) -> L.Trainer:
    return L.Trainer(
        accelerator=accelerator,
        devices=1,
        precision=precision,
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=1.0,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )
