"""Callbacks that Lightning does not ship; everything else comes from lightning.pytorch.callbacks."""

from callbacks.train_val_gap import TrainValGapEarlyStopping

__all__ = ["TrainValGapEarlyStopping"]
