"""Checkpoint files written so that a kill never leaves a broken one, and read without running code from them.

`SafeCheckpointIO` is a Lightning CheckpointIO plugin: `Trainer(plugins=[SafeCheckpointIO()])`. Every checkpoint the
Trainer writes (ModelCheckpoint, save_checkpoint) and every one it reads (fit/validate/test --ckpt_path) goes through
it. `check_ckpt_path` refuses a bad --ckpt_path before Lightning starts; `remove_stale_temp_files` clears what killed
saves left behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import re
import secrets
import socket
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.plugins.io.wrapper import _WrappingCheckpointIO

from lightning_gpt.errors import UserInputError

# Lightning resolves these --ckpt_path values to a file itself (from the callbacks' state or the run folder).
CKPT_KEYWORDS = ("last", "best", "hpc")

# A save writes `.<name>.<pid>.<host>-<random>.tmp` next to `<name>`. The host tag keeps a cleanup on one machine
# from judging the temp files of another one writing to the same shared folder: its pids mean nothing here.
_HOST = f"{zlib.crc32(socket.gethostname().encode()) & 0xFFFFFF:06x}"
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<host>[0-9a-f]{6})-[0-9a-f]{8}\.tmp$")

# What reading a damaged file raises, found by truncating real checkpoints and flipping bytes in them. Python's
# zipfile (the directory check): BadZipFile, UnicodeDecodeError (a garbled member name), NotImplementedError (a
# garbled version field). torch.load: its zip reader's RuntimeError and OSError, and the unpickler's errors on
# garbled pickle data (AssertionError included: torch asserts on the structure of what it unpickled).
_ZIP_DAMAGED = (zipfile.BadZipFile, ValueError, NotImplementedError, EOFError, struct.error, OverflowError)
_DAMAGED = (
    *_ZIP_DAMAGED,
    RuntimeError,
    OSError,
    KeyError,
    IndexError,
    AttributeError,
    TypeError,
    AssertionError,
    pickle.UnpicklingError,
)


def _is_remote(path: Any) -> bool:
    return "://" in str(path)


def _remote_error(path: Any, flag: str) -> UserInputError:
    return UserInputError(
        f"{flag} {path}: remote checkpoints are not loaded; download the file first and pass its local path."
    )


def _unreadable(path: Any, flag: str, reason: str) -> UserInputError:
    return UserInputError(
        f"{flag} {path} is not a readable lightning-gpt checkpoint: {reason}. Pass a checkpoint written by "
        "lightning-gpt fit."
    )


def _structure_problem(path: Path) -> str | None:
    """Why `path` cannot be a checkpoint, judged from the zip directory alone (no pickle is run), or None.

    torch.save writes a zip archive with a `<archive>/data.pkl` member; its directory is at the end of the file, so
    a file cut short by a kill or a full disk fails here, before any unpickling."""
    if not path.exists():
        return "no such file"
    if path.is_dir():
        return "it is a folder, not a file"
    try:
        if path.stat().st_size == 0:
            return "the file is empty"
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except _ZIP_DAMAGED:
        return "the file is truncated or damaged, or is not in torch.save's zip format"
    except OSError as err:
        return f"it cannot be read ({err.strerror or err})"
    if not any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
        return "the zip archive holds no data.pkl, so it was not written by torch.save"
    return None


def check_ckpt_path(path: str | os.PathLike | None, flag: str = "--ckpt_path") -> None:
    """Refuses a --ckpt_path that cannot work, before Lightning starts; loads nothing.

    None and Lightning's keywords ("last", "best", "hpc") pass untouched. A URL, a missing file, a folder, an empty
    file and one that is not a complete torch zip archive (a truncated save) are refused with a UserInputError that
    names `flag`. Only the archive's directory is read: the weights are checked when the Trainer loads them."""
    if path is None or str(path) in CKPT_KEYWORDS:
        return
    if _is_remote(path):
        raise _remote_error(path, flag)
    problem = _structure_problem(Path(path))
    if problem:
        raise _unreadable(path, flag, problem)


def load_checkpoint_file(
    path: str | os.PathLike, map_location: Any = "cpu", flag: str = "--ckpt_path", mmap: bool = False
) -> dict[str, Any]:
    """torch.load with weights_only=True of a local checkpoint file; every way it can fail is one UserInputError
    that names `flag` and the file. `mmap` maps the tensors instead of reading them (to read only a few entries)."""
    if _is_remote(path):
        raise _remote_error(path, flag)
    problem = _structure_problem(Path(path))
    if problem:
        raise _unreadable(path, flag, problem)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))
        if found:  # the weights-only unpickler met a class or function: never imported, never called
            raise _unreadable(
                path,
                flag,
                f"it holds objects other than weights ({found[1]}) and is not loaded for safety, since loading them "
                "could run code from the file",
            ) from None
        # Garbled pickle data, or a pickle protocol above 3 (torch.save's default is 2), which it cannot parse.
        reason = f"the weights-only unpickler refused it ({_first_line(err.__context__ or err)})"
        raise _unreadable(path, flag, f"{reason}; the file is damaged or not a plain checkpoint") from None
    except _DAMAGED as err:
        raise _unreadable(path, flag, f"the file is damaged ({_first_line(err)})") from None
    if not isinstance(checkpoint, dict):
        raise _unreadable(path, flag, f"it holds a {type(checkpoint).__name__}, not a checkpoint dictionary")
    return checkpoint


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    detail = text[0] if text else ""
    detail = detail.split(". This is an internal miniz error")[0]
    return f"{type(err).__name__}: {detail[:160]}" if detail else type(err).__name__


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Deletes the temp files of saves that were killed, in `folder`; returns the paths it deleted.

    A temp file is stale when the process named in it (by pid, on this host) no longer runs. Files of live
    processes, of other hosts and any file whose name is not a SafeCheckpointIO temp name are kept."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.iterdir():
        match = _TEMP_NAME.match(entry.name)
        if not match or match["host"] != _HOST or not entry.is_file() or _is_alive(int(match["pid"])):
            continue
        with contextlib.suppress(FileNotFoundError):  # another cleanup got there first
            entry.unlink()
            removed.append(entry)
    return removed


def _is_alive(pid: int) -> bool:
    if pid <= 0:  # not a process: os.kill(0, ...) would address our own process group
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


def _fsync_folder(folder: Path) -> None:
    """Makes the rename in `folder` durable. Some filesystems cannot fsync a folder; those are skipped."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # e.g. Windows, where folders cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's TorchCheckpointIO with an atomic local save and a weights-only load.

    Overridden because Lightning's save (`_atomic_save`) serializes into memory and writes through an fsspec
    transaction whose temp file lives in $TMPDIR, then moves it: with $TMPDIR on another filesystem the move is a
    copy, and a kill during it left a 0-byte last.ckpt; nothing is fsynced. Its load turns weights_only off for
    http(s) URLs and follows any fsspec URL. Here a save writes and fsyncs a temp file next to the destination and
    renames it over the destination, so the destination is always the old or the new complete file; a load reads
    local files only, always with weights_only=True, and turns every failure into one UserInputError.
    remove_checkpoint is inherited.
    """

    def __init__(self) -> None:
        super().__init__()
        self._cleaned_folders: set[Path] = set()

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint takes no storage_options, got {storage_options!r}.")
        if _is_remote(path):
            raise UserInputError(
                f"checkpoint {path}: lightning-gpt saves checkpoints to local folders only; set "
                "--trainer.default_root_dir (or the ModelCheckpoint dirpath) to a local folder and copy the files "
                "afterwards."
            )
        path = Path(path)
        folder = path.parent
        folder.mkdir(parents=True, exist_ok=True)
        key = folder.resolve()
        if key not in self._cleaned_folders:
            remove_stale_temp_files(folder)
            self._cleaned_folders.add(key)

        temp = folder / f".{path.name}.{os.getpid()}.{_HOST}-{secrets.token_hex(4)}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # O_EXCL: never another save's file
        try:
            with os.fdopen(fd, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, path)
        except BaseException:  # KeyboardInterrupt and SystemExit too: the old checkpoint stays, the temp goes
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        _fsync_folder(folder)

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
        "atomically and loads weights only through lightning_gpt.checkpoint_io.SafeCheckpointIO, so leave other "
        "CheckpointIO plugins out (an AsyncCheckpointIO must wrap a SafeCheckpointIO)."
    )
