"""The Trainer's checkpoints saved atomically and loaded weights-only: `SafeCheckpointIO`, a Lightning CheckpointIO
plugin (`Trainer(plugins=[SafeCheckpointIO()])`); the CLI puts it on every run (`use_safe_checkpoint_io`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.plugins.io.wrapper import _WrappingCheckpointIO

from lightning_gpt.atomic import atomic_file, remove_leftovers
from lightning_gpt.checkpoint_io import is_remote, load_checkpoint_file
from lightning_gpt.errors import UserInputError


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's TorchCheckpointIO with an atomic local save and a weights-only load.

    Overridden because Lightning's save (`_atomic_save`) serializes into memory and writes through an fsspec
    transaction whose temp file lives in $TMPDIR, then moves it: with $TMPDIR on another filesystem the move is a
    copy, and a kill during it left a 0-byte last.ckpt; nothing is fsynced. Its load turns weights_only off for
    http(s) URLs and follows any fsspec URL. Here a save goes through lightning_gpt/atomic.py (a temp file beside
    the destination, fsynced, renamed over it), and the first save into a folder removes what killed saves left; a
    load reads local files only, always with weights_only=True, and turns every failure into one UserInputError.
    remove_checkpoint is inherited.
    """

    def __init__(self) -> None:
        super().__init__()
        self._cleaned_folders: set[Path] = set()

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint takes no storage_options, got {storage_options!r}.")
        if is_remote(path):
            raise UserInputError(
                f"checkpoint {path}: lightning-gpt saves checkpoints to local folders only; set "
                "--trainer.default_root_dir (or the ModelCheckpoint dirpath) to a local folder and copy the files "
                "afterwards."
            )
        path = Path(path)
        key = path.parent.resolve()
        if key not in self._cleaned_folders:
            remove_leftovers(path.parent)
            self._cleaned_folders.add(key)
        with atomic_file(path) as file:
            torch.save(checkpoint, file)

    def load_checkpoint(
        self,
        path: Any,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        if weights_only is False:
            raise UserInputError(
                "--weights_only false: lightning-gpt loads checkpoints with weights_only=True only. Its own "
                "checkpoints hold nothing else, and loading other objects could run code from the file."
            )
        return load_checkpoint_file(path, map_location=map_location)


def use_safe_checkpoint_io(trainer: Any) -> None:
    """Makes `trainer` save and load through SafeCheckpointIO, whatever --trainer.plugins said.

    A list given on the command line replaces a `trainer_defaults` one, so a default plugin alone can be dropped by
    a flag. Lightning's own TorchCheckpointIO (what a Trainer without a CheckpointIO plugin uses) is swapped for a
    SafeCheckpointIO; any other CheckpointIO is refused. A wrapper such as AsyncCheckpointIO passes when it wraps a
    SafeCheckpointIO."""
    io = trainer.strategy.checkpoint_io  # Lightning creates its default TorchCheckpointIO here if none was given
    base = io.checkpoint_io if isinstance(io, _WrappingCheckpointIO) else io
    if isinstance(base, SafeCheckpointIO):
        return
    if type(io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = SafeCheckpointIO()
        return
    raise UserInputError(
        f"--trainer.plugins: {type(base).__name__} would write and read the checkpoints; lightning-gpt saves them "
        "atomically and loads weights only through lightning_gpt.training.checkpoint_plugin.SafeCheckpointIO, so "
        "leave other CheckpointIO plugins out (an AsyncCheckpointIO must wrap a SafeCheckpointIO)."
    )
