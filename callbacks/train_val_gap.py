"""Early stopping on overfitting: the gap between the validation loss and the training loss, both in eval mode.

Lightning's `EarlyStopping` watches one metric for lack of improvement (or crossing a fixed threshold at once);
it cannot compare two metrics or wait `patience` validations over a threshold, hence this class.
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn


class TrainValGapEarlyStopping(L.Callback):
    """Stops when `val_loss` minus `train_eval_loss` exceeds `max_gap` for `patience` validations in a row; logs
    the gap as `train_val_gap`.

    `train_eval_loss` is the loss on a fixed sample of training batches scored at each validation like the
    validation split itself (eval mode, so no dropout; the same model weights), as nanoGPT's estimate_loss does:
    the running training loss would compare a dropout-on loss, averaged over weights that kept changing, with a
    dropout-off one.

    Args:
        max_gap: largest tolerated val - train loss gap, in nats per token.
        patience: validations in a row over `max_gap` before stopping.
        monitor: the validation loss logged by the module.
        train_monitor: the eval-mode training loss logged by the module.
    """

    def __init__(
        self, max_gap: float = 0.5, patience: int = 3, monitor: str = "val_loss", train_monitor: str = "train_eval_loss"
    ) -> None:
        super().__init__()
        self.max_gap, self.patience = max_gap, patience
        self.monitor, self.train_monitor = monitor, train_monitor
        self.wait = 0
        self.stopped_reason: str | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.training and trainer.state.fn != "fit":
            return  # `validate` and `test` judge nothing
        if self.monitor not in trainer.callback_metrics:
            return
        if self.train_monitor not in trainer.callback_metrics:
            rank_zero_warn(f"TrainValGapEarlyStopping: no {self.train_monitor!r} was logged, so no gap is judged.")
            return
        val_loss = float(trainer.callback_metrics[self.monitor])
        train_loss = float(trainer.callback_metrics[self.train_monitor])
        gap = val_loss - train_loss  # both are synced across ranks by the module's metrics: every rank agrees
        step = trainer.fit_loop.epoch_loop._batches_that_stepped  # the step Lightning logs val_loss at
        for logger in trainer.loggers:
            logger.log_metrics({"train_val_gap": gap}, step=step)
        trainer.callback_metrics["train_val_gap"] = torch.tensor(gap)
        self.wait = self.wait + 1 if gap > self.max_gap else 0
        last_step = trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step
        if self.wait >= self.patience and not last_step:  # at max_steps the run ends anyway: one stop, one reason
            self.stopped_reason = (
                f"stopped at step {trainer.global_step}: {self.monitor} {val_loss:.4f} exceeded {self.train_monitor} "
                f"{train_loss:.4f} by {gap:.4f} > max_gap {self.max_gap} for {self.wait} validations in a row "
                "(overfitting)"
            )
            trainer.should_stop = True
            rank_zero_info(f"TrainValGapEarlyStopping: {self.stopped_reason}")

    def state_dict(self) -> dict:
        return {"wait": self.wait}

    def load_state_dict(self, state_dict: dict) -> None:
        self.wait = state_dict["wait"]
