"""Checkpoint files read without running code from them: every load is weights-only, and every way a file can be
unusable (missing, a folder, empty, truncated, damaged, holding other objects than weights, remote) is one
UserInputError that names the flag and the file. Writing them atomically is lightning_gpt/atomic.py's job (the
Trainer's saves go through lightning_gpt/training/checkpoint_plugin.py)."""

from __future__ import annotations

import os
import pickle
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch

from lightning_gpt.errors import UserInputError

# Lightning resolves these --ckpt_path values to a file itself (from the callbacks' state or the run folder).
CKPT_KEYWORDS = ("last", "best", "hpc")

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


def is_remote(path: Any) -> bool:
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
    if is_remote(path):
        raise _remote_error(path, flag)
    problem = _structure_problem(Path(path))
    if problem:
        raise _unreadable(path, flag, problem)


def load_checkpoint_file(
    path: str | os.PathLike, map_location: Any = "cpu", flag: str = "--ckpt_path", mmap: bool = False
) -> dict[str, Any]:
    """torch.load with weights_only=True of a local checkpoint file; every way it can fail is one UserInputError
    that names `flag` and the file. `mmap` maps the tensors instead of reading them (to read only a few entries)."""
    if is_remote(path):
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
