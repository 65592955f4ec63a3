"""The training progress bar: Lightning's, with the optimizer step out of `max_steps` in place of `Epoch 0/-2`
(Lightning counts epochs against `max_epochs`, which is -1 in step-budgeted runs) and without `v_num`, the logger's
version cut to its last 4 characters (`moke` for the smoke runs' version "smoke")."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE, RichProgressBar


def step_description(trainer: L.Trainer) -> str:
    """`step 12/60` (optimizer steps) in a step-budgeted run, else `epoch 3/9` (or `epoch 3` without a limit)."""
    if trainer.max_steps is not None and trainer.max_steps > 0:
        return f"step {trainer.global_step}/{trainer.max_steps}"
    last = f"/{trainer.max_epochs - 1}" if trainer.max_epochs is not None and trainer.max_epochs > 0 else ""
    return f"epoch {trainer.current_epoch}{last}"


def without_version(items: dict) -> dict:
    items.pop("v_num", None)  # the run's folder says which version it is; Lightning shows only its last 4 characters
    return items


class StepRichProgressBar(RichProgressBar):
    """RichProgressBar with `step_description` for the training bar, updated at every batch, and no `v_num`."""

    def _get_train_description(self, current_epoch: int) -> str:
        description = step_description(self.trainer)
        # As Lightning's: padded to the validation bar's description, so that the bars do not shift.
        return f"{description:{len(self.validation_description)}}"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.progress is not None and self.train_progress_bar_id is not None:
            description = self._get_train_description(trainer.current_epoch)
            theme = self.theme.description
            self.progress.update(
                self.train_progress_bar_id, description=f"[{theme}]{description}" if theme else description
            )

    def get_metrics(self, trainer, pl_module) -> dict:
        return without_version(super().get_metrics(trainer, pl_module))


class StepTQDMProgressBar(TQDMProgressBar):
    """TQDMProgressBar (where `rich` is not installed) with `step_description` and no `v_num`."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self._train_progress_bar is not None:  # the property raises while there is none
            self._train_progress_bar.set_description(step_description(trainer))

    def get_metrics(self, trainer, pl_module) -> dict:
        return without_version(super().get_metrics(trainer, pl_module))


def use_step_progress_bar(trainer: L.Trainer) -> None:
    """Puts the step progress bar in place of Lightning's default one (a bar a config chose itself stays)."""
    bar = trainer.progress_bar_callback
    if type(bar) not in (RichProgressBar, TQDMProgressBar):
        return
    ours: ProgressBar = (
        StepRichProgressBar() if type(bar) is RichProgressBar and _RICH_AVAILABLE else StepTQDMProgressBar()
    )
    trainer.callbacks[trainer.callbacks.index(bar)] = ours
