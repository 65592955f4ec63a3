"""A ModelCheckpoint whose last.ckpt follows every validation, improved or not."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class KeepLastCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, except that with `save_last` it rewrites last.ckpt after every validation.

    Lightning (2.6) writes last.ckpt at a validation only when it also saved a top-k checkpoint there, i.e. when the
    monitored metric improved: after a plateau, `--ckpt_path last` would restart from the best step, not the latest,
    and a crashed run would lose every step since. Same arguments as ModelCheckpoint.
    """

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)  # saves best (and last with it) when the metric improved
        # Skipped when super() saved at this step already (or outside fit, or in the sanity check).
        skip = self._should_skip_saving_checkpoint(trainer) or self._should_save_on_train_epoch_end(trainer)
        if self.save_last and not skip:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
