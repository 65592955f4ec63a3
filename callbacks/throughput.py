"""Lightning's ThroughputMonitor, with its counters kept across a resume."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ThroughputMonitor
from lightning.pytorch.trainer.states import RunningStage

TRAINING = RunningStage.TRAINING


class ResumableThroughputMonitor(ThroughputMonitor):
    """ThroughputMonitor (tokens/s, MFU, and the running `train/time`, `train/batches`, `train/samples`,
    `train/lengths`), whose running counts go on from where the checkpoint left them: Lightning's restart from 0 at
    every resume, so their curves jump back. The rates start a fresh window after a resume, as they should (the
    pause is no throughput). Same arguments as ThroughputMonitor."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._resumed: dict = {}

    def state_dict(self) -> dict:
        if TRAINING not in self._samples:
            return {}
        times = self._throughputs[TRAINING]._time
        return {
            "time": float(times[-1]) if times else 0.0,
            "batches": self._batches[TRAINING],
            "samples": self._samples[TRAINING],
            "lengths": self._lengths[TRAINING],
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self._resumed = dict(state_dict)

    def on_train_start(self, trainer: L.Trainer, *args) -> None:
        super().on_train_start(trainer, *args)  # rank zero only: it sets the counters to 0 there
        if self._resumed and TRAINING in self._samples:
            self._t0s[TRAINING] -= self._resumed["time"]
            self._batches[TRAINING] = self._resumed["batches"]
            self._samples[TRAINING] = self._resumed["samples"]
            self._lengths[TRAINING] = self._resumed["lengths"]
            self._resumed = {}
