"""Token caches: flat arrays per split (token ids, and for chat a loss mask and sample lengths), written once
atomically, read back through memory maps.

A cache is `<base>.<array>.bin` files plus `<base>.json` (what built it, and each array's length). The JSON is
written last, so a cache without one is unfinished and is rebuilt; a finished cache is never overwritten in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from lightning_gpt.atomic import atomic_file, write_atomic
from lightning_gpt.errors import UserInputError

CACHE_FORMAT = 2


def default_cache_dir() -> Path:
    return Path(os.environ.get("LIGHTNING_GPT_CACHE", Path.home() / ".cache" / "lightning_gpt")) / "tokens"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def source_fingerprint(path: str) -> str:
    """What identifies the data behind `path`: for a local folder, every file's name, size and mtime, so that
    editing the data rebuilds the cache; for a hub id, the id itself."""
    local = Path(path).expanduser()
    if not local.exists():
        return f"hub:{path}"
    # Hidden names are skipped inside the folder only: the folder itself may sit under `..` or `~/.cache`.
    files = sorted(p for p in local.rglob("*") if p.is_file() and not _hidden(p.relative_to(local)))
    stats = [f"{p.relative_to(local)}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files]
    return f"local:{local.resolve()}|" + "|".join(stats)


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def cache_key(*parts: str) -> str:
    return hashlib.sha256("\x1f".join((f"v{CACHE_FORMAT}", *parts)).encode()).hexdigest()[:20]


def array_path(base: Path, name: str) -> Path:
    return base.parent / f"{base.name}.{name}.bin"


def meta_path(base: Path) -> Path:
    return base.parent / f"{base.name}.json"


def write_cache(base: Path, chunks: Iterable[dict[str, np.ndarray]], dtypes: dict[str, np.dtype], meta: dict) -> dict:
    """Streams chunks of named arrays into `<base>.<name>.bin` files through temporary files, then publishes the
    metadata `<base>.json`, which records each array's length.

    Memory stays at one chunk whatever the corpus size. On any error, including Ctrl-C, the temporary files are
    removed and an existing cache is left as it was. Returns the metadata written.
    """
    lengths = dict.fromkeys(dtypes, 0)
    # Each array lands under its name only when every one is complete; on any error none does.
    with contextlib.ExitStack() as stack:
        files = {name: stack.enter_context(atomic_file(array_path(base, name))) for name in dtypes}
        for chunk in chunks:
            for name, values in chunk.items():
                files[name].write(np.asarray(values, dtype=dtypes[name]).tobytes())
                lengths[name] += len(values)
    meta = {
        **meta,
        "format": CACHE_FORMAT,
        "arrays": {n: {"dtype": np.dtype(d).name, "length": lengths[n]} for n, d in dtypes.items()},
    }
    write_atomic(meta_path(base), json.dumps(meta, indent=2))
    return meta


def read_cache_meta(base: Path, tokenizer_fingerprint: str) -> dict | None:
    """The metadata of a finished cache at `base`, None when there is none; refuses a cache that does not match
    this tokenizer or whose arrays have the wrong size."""
    path = meta_path(base)
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserInputError(f"token cache {path} is not valid JSON ({err}); delete it and it is rebuilt.") from None
    if meta.get("tokenizer") != tokenizer_fingerprint:
        raise UserInputError(
            f"token cache {path} was built by tokenizer {meta.get('tokenizer')!r}, but this run uses "
            f"{tokenizer_fingerprint!r}; delete {base}.* (they are rebuilt), or set --data.cache_dir to another folder."
        )
    for name, info in meta.get("arrays", {}).items():
        file = array_path(base, name)
        expected = info["length"] * np.dtype(info["dtype"]).itemsize
        found = file.stat().st_size if file.is_file() else None
        if found != expected:
            raise UserInputError(
                f"token cache {file} holds {found} bytes, its metadata {path.name} promises {expected}; "
                f"delete {base}.* and they are rebuilt."
            )
    return meta


def open_array(base: Path, meta: dict, name: str) -> np.ndarray:
    """A read-only memory map: pages are read on demand, so RAM does not grow with the corpus."""
    info = meta["arrays"][name]
    if info["length"] == 0:
        return np.zeros(0, dtype=np.dtype(info["dtype"]))
    return np.memmap(array_path(base, name), dtype=np.dtype(info["dtype"]), mode="r", shape=(info["length"],))


def batched(items: Iterable, size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
