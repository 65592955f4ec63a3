"""Early stopping on overfitting: the gap between validation loss and recent training loss.

Lightning's `EarlyStopping` watches one metric for lack of improvement (or crossing a fixed threshold at once);
it cannot compare two metrics over a window or wait `patience` validations over a threshold, hence this class.
"""

from __future__ import annotations

import logging

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

log = logging.getLogger(__name__)


class TrainValGapEarlyStopping(L.Callback):
    """Stops when `val_loss` minus the mean training loss since the previous validation exceeds `max_gap` for
    `patience` validations in a row. Logs the gap as `train_val_gap`.

    Args:
        max_gap: largest tolerated val - train loss gap, in nats per token.
        patience: validations in a row over `max_gap` before stopping.
        monitor: the validation loss logged by the module.
        min_train_batches: validations with fewer training batches since the previous one are not judged.
    """

    def __init__(self, max_gap: float = 0.5, patience: int = 3, monitor: str = "val_loss", min_train_batches: int = 1):
        super().__init__()
        self.max_gap, self.patience, self.monitor = max_gap, patience, monitor
        self.min_train_batches = min_train_batches
        self.train_loss_sum, self.train_batches, self.wait = 0.0, 0, 0
        self.stopped_reason: str | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        # Lightning hands over the loss divided by accumulate_grad_batches; undo that to compare with val_loss.
        self.train_loss_sum += float(loss) * trainer.accumulate_grad_batches
        self.train_batches += 1

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        if self.train_batches < self.min_train_batches:
            return
        # Each rank saw other batches: average the training loss over ranks so they all decide alike.
        train_mean = trainer.strategy.reduce(
            torch.tensor(self.train_loss_sum / self.train_batches, device=pl_module.device), reduce_op="mean"
        )
        val_loss = trainer.callback_metrics[self.monitor].to(pl_module.device)
        gap = float(val_loss - train_mean)
        self.train_loss_sum, self.train_batches = 0.0, 0
        for logger in trainer.loggers:
            logger.log_metrics({"train_val_gap": gap}, step=trainer.global_step)
        trainer.callback_metrics["train_val_gap"] = torch.tensor(gap)
        self.wait = self.wait + 1 if gap > self.max_gap else 0
        if self.wait >= self.patience:
            self.stopped_reason = (
                f"stopped at step {trainer.global_step}: {self.monitor} {float(val_loss):.4f} exceeded the mean "
                f"training loss {float(train_mean):.4f} by {gap:.4f} > max_gap {self.max_gap} for {self.wait} "
                "validations in a row (overfitting)"
            )
            trainer.should_stop = True
            rank_zero_info(f"TrainValGapEarlyStopping: {self.stopped_reason}")

    def state_dict(self) -> dict:
        return {"train_loss_sum": self.train_loss_sum, "train_batches": self.train_batches, "wait": self.wait}

    def load_state_dict(self, state_dict: dict) -> None:
        self.train_loss_sum = state_dict["train_loss_sum"]
        self.train_batches = state_dict["train_batches"]
        self.wait = state_dict["wait"]
