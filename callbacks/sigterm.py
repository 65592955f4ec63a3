"""On SIGTERM (what `timeout`, `kill` and cluster schedulers send), save the run at the next optimizer step and stop.

Lightning's own handling stops after the current batch, possibly inside a gradient-accumulation window, saves
nothing and exits 0: a job killed after hours loses everything since its last periodic checkpoint.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import lightning as L

from lightning_gpt.errors import TrainingStopped

SIGTERM_EXIT_CODE = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM


class CheckpointOnSigterm(L.Callback):
    """Turns a SIGTERM during `fit` into: finish the current optimizer step, save `last.ckpt` where
    `--ckpt_path last` finds it, print where it is, exit with code 143.

    The signal handler wraps Lightning's, which still runs (it forwards the signal to DDP worker processes and logs
    it; SLURM's requeue on SIGUSR1 is untouched); only Lightning's stop-after-this-batch is deferred to the end of
    the accumulation window. When a validation is due after that step, the save waits until the validation and the
    ModelCheckpoints after it are done (a resume would skip that validation): Lightning calls callbacks' hooks before
    the module's and orders ModelCheckpoints last, so TrainingModule.on_validation_end calls `after_validation`. The
    lightning-gpt CLI adds this callback to every run.
    """

    def __init__(self) -> None:
        super().__init__()
        self.requested = False
        self._after_validation = False
        self._step_at_batch_start = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.requested = self._after_validation = False
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        lightning_handler = signal.getsignal(signal.SIGTERM)

        def handler(signum, frame) -> None:
            if callable(lightning_handler):
                lightning_handler(signum, frame)
            # Lightning's handler set this flag to stop after the current batch; we stop at the step's end instead.
            trainer._signal_connector.received_sigterm = False
            self.requested = True

        signal.signal(signal.SIGTERM, handler)  # Lightning restores the original handlers when fit ends

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step == self._step_at_batch_start or self._after_validation:
            return  # inside an accumulation window, or already stopping
        stop = self.requested
        if trainer.world_size > 1:  # every rank must stop at the same step
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop:
            return
        epoch_loop = trainer.fit_loop.epoch_loop
        if epoch_loop._should_check_val_fx(trainer.fit_loop._data_fetcher):  # Lightning validates after this batch
            self._after_validation = True
            return
        self._save_and_stop(trainer)

    def after_validation(self, trainer: L.Trainer) -> None:
        """Called by the module once a validation and every callback's reaction to it are done."""
        if self._after_validation and not trainer.sanity_checking:
            self._save_and_stop(trainer)

    def _save_and_stop(self, trainer: L.Trainer) -> None:
        path = last_checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        raise TrainingStopped(
            f"received SIGTERM: saved step {trainer.global_step} to {path}. To go on, run the same command with "
            "--ckpt_path last (or --ckpt_path FILE).",
            exit_code=SIGTERM_EXIT_CODE,
        )


def last_checkpoint_path(trainer: L.Trainer) -> Path:
    """Where `--ckpt_path last` looks: `last.ckpt` in the folder of a ModelCheckpoint that keeps one."""
    callbacks = [cb for cb in trainer.checkpoint_callbacks if not isinstance(cb, CheckpointOnSigterm)]
    keeping_last = [cb for cb in callbacks if getattr(cb, "save_last", False)] or callbacks
    for cb in keeping_last:
        if getattr(cb, "dirpath", None):
            return Path(cb.dirpath) / f"last{cb.FILE_EXTENSION}"
    return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
