"""Files and folders written so that a reader never sees half of one, and what killed writers left cleaned up.

Everything is built under a temporary name beside its destination, `.<name>.<host>-<pid>.<random>.tmp`, fsynced,
then renamed over it: the destination is the old complete thing or the new one, never a part. The host and pid in
the name let a later process remove what a killed one (SIGKILL runs no cleanup) left: only its own machine's, and
only once that process is gone, since a live one may be writing right now. Scratch folders (`.raw-<host>-<pid>-...`)
are cleaned the same way. Token caches, checkpoints, make-pairs shards, the --docs index and exports all use this.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

# A host name as it can appear in a file name.
HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:40] or "host"
_LEFTOVER = re.compile(r"^\.(raw-(?P<dir>\w+)-(?P<dir_pid>\d+)-\w+|.+\.(?P<file>\w+)-(?P<file_pid>\d+)\.\w+\.tmp)$")


def owner_tag() -> str:
    """`<host>-<pid>` of this process, for the names of its temporary files and folders."""
    return f"{HOST}-{os.getpid()}"


def is_alive(pid: int) -> bool:
    if os.name == "nt" or pid <= 0:  # signal 0 means something else on Windows, and pid 0 is our process group
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_leftovers(folder: str | os.PathLike) -> list[Path]:
    """Removes the temporary files, folders and scratch folders that killed processes of this machine left in
    `folder`; returns what it removed. Those of live processes and of other hosts are kept."""
    folder, removed = Path(folder), []
    for entry in folder.glob(".*") if folder.is_dir() else ():
        match = _LEFTOVER.match(entry.name)
        if match is None:
            continue
        host, pid = (match["dir"], match["dir_pid"]) if match["dir"] else (match["file"], match["file_pid"])
        if host != HOST or is_alive(int(pid)):
            continue
        with contextlib.suppress(FileNotFoundError):  # another cleanup got there first
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
    return removed


def scratch_folder(parent: str | os.PathLike) -> tempfile.TemporaryDirectory:
    """A temporary folder in `parent` (removed on exit, or by a later remove_leftovers if this process is killed)."""
    return tempfile.TemporaryDirectory(dir=parent, prefix=f".raw-{owner_tag()}-")


def fsync_folder(folder: Path) -> None:
    """Makes a rename in `folder` durable. Some filesystems cannot fsync a folder; those are skipped."""
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


def _temp_name(path: Path) -> str:
    return f".{path.name}.{owner_tag()}."


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write `path`'s new content into; on success it replaces `path`, on any error (Ctrl-C
    included) it is removed and `path` keeps its old content. The folder is made if missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=_temp_name(path), suffix=".tmp")
    os.chmod(temp, ordinary_mode())  # as an ordinary file would be, not mkstemp's 0600
    try:
        with os.fdopen(fd, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """`path` holds its old content or `data` (text is written as UTF-8), never a part of it."""
    with atomic_file(path) as file:
        file.write(data.encode() if isinstance(data, str) else data)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """A folder to build `path` in; on success it is renamed into place (over an existing `path` only with
    `replace`), on any error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(dir=path.parent, prefix=_temp_name(path), suffix=".tmp"))
    try:
        yield build
        os.chmod(build, 0o777 & ~_umask())  # mkdtemp makes it private
        if replace and path.exists():
            shutil.rmtree(path)
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()  # rename cannot replace a folder, even an empty one
        os.replace(build, path)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    fsync_folder(path.parent)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def ordinary_mode() -> int:
    """The permissions an ordinary new file gets here (0o666 less the umask), for files a library writes private."""
    return 0o666 & ~_umask()
