"""Callbacks that Lightning does not ship; everything else comes from lightning.pytorch.callbacks."""

from callbacks.alignment_samples import AlignmentSamples
from callbacks.benchmark import BlimpAccuracy
from callbacks.last_checkpoint import KeepLastCheckpoint
from callbacks.sigterm import CheckpointOnSigterm
from callbacks.text_samples import GenerateSamples
from callbacks.throughput import ResumableThroughputMonitor
from callbacks.train_val_gap import TrainValGapEarlyStopping

__all__ = [
    "AlignmentSamples",
    "BlimpAccuracy",
    "CheckpointOnSigterm",
    "GenerateSamples",
    "KeepLastCheckpoint",
    "ResumableThroughputMonitor",
    "TrainValGapEarlyStopping",
]
