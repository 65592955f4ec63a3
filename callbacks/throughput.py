"""Lightning's ThroughputMonitor, without a CUDA synchronize per batch, and with its counters kept across a resume."""

from __future__ import annotations

import time

import lightning as L
import torch
from lightning.pytorch.callbacks import ThroughputMonitor
from lightning.pytorch.trainer.states import RunningStage

TRAINING = RunningStage.TRAINING
RATES = ("items_per_sec",)  # the run-wide rate the README promises (tokens/s), as Lightning names it


class ResumableThroughputMonitor(ThroughputMonitor):
    """ThroughputMonitor (tokens/s, MFU, and the running `train/time`, `train/batches`, `train/samples`,
    `train/lengths`), with three changes. Same arguments as ThroughputMonitor.

    - In training, Lightning's monitor synchronizes CUDA after every batch so that its clock is right, which stalls
      the host once per micro-batch. This one counts every batch on the host (no device access) and reads the clock,
      after one synchronize, only at the steps where it logs (every log_every_n_steps). `window_size` therefore
      counts those log points: the rates are over the last `window_size` of them.
    - Its running counts go on from where the checkpoint left them: Lightning's restart from 0 at every resume, so
      their curves jump back. The rates start a fresh window after a resume, as they should (the pause is no
      throughput).
    - The run-wide rates (`train/items_per_sec`: tokens/s) are written on one device too, equal to the device's.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._resumed: dict = {}
        self._flops_since_update = 0

    def _update(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, iter_num: int) -> None:
        if trainer.state.stage != TRAINING:  # validation already syncs per batch for its metrics
            return super()._update(trainer, pl_module, batch, iter_num)
        if self.length_fn is not None:
            self._lengths[TRAINING] += self.length_fn(batch)
        self._samples[TRAINING] += self.batch_size_fn(batch)
        self._batches[TRAINING] += 1
        self._flops_since_update += getattr(pl_module, "flops_per_batch", 0)
        # The same condition as ThroughputMonitor._compute: only these updates are ever logged.
        if trainer.fit_loop._should_accumulate() or not trainer._logger_connector.should_update_logs:
            return
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()  # the clock must see the work done, not only the work queued
        self._throughputs[TRAINING].update(
            time=time.perf_counter() - self._t0s[TRAINING],
            batches=self._batches[TRAINING],
            samples=self._samples[TRAINING],
            lengths=None if self.length_fn is None else self._lengths[TRAINING],
            flops=self._flops_since_update or None,
        )
        self._flops_since_update = 0

    def _compute(self, trainer: L.Trainer, iter_num: int | None = None) -> None:
        """Lightning's, plus the run's rates on one device: Lightning writes `train/items_per_sec` (tokens/s of the
        whole run) only with several devices, `train/device/items_per_sec` always; on one they are the same."""
        if not trainer._logger_connector.should_update_logs:
            return
        stage = trainer.state.stage
        throughput = self._throughputs[stage]
        metrics = throughput.compute()
        if throughput.world_size == 1:
            for name in RATES:
                device = f"device{throughput.separator}{name}"
                if device in metrics:
                    metrics.setdefault(name, metrics[device])
        metrics = {f"{stage.value}{throughput.separator}{k}": v for k, v in metrics.items()}
        trainer._logger_connector.log_metrics(metrics, step=iter_num)

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
        self._flops_since_update = 0
        if self._resumed and TRAINING in self._samples:
            self._t0s[TRAINING] -= self._resumed["time"]
            self._batches[TRAINING] = self._resumed["batches"]
            self._samples[TRAINING] = self._resumed["samples"]
            self._lengths[TRAINING] = self._resumed["lengths"]
            self._resumed = {}
