"""Token caches: one flat array of token ids per split, written once atomically, read back through a memory map.

A cache is two files: `<key>.bin` (the ids) and `<key>.json` (what built it). The JSON is written last, so a
cache without one is unfinished and is rebuilt; a finished cache is never overwritten in place.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from lightning_gpt.errors import UserInputError

CACHE_FORMAT = 1


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
    files = sorted(p for p in local.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.parts))
    stats = [f"{p.relative_to(local)}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files]
    return f"local:{local.resolve()}|" + "|".join(stats)


def cache_key(*parts: str) -> str:
    return hashlib.sha256("\x1f".join((f"v{CACHE_FORMAT}", *parts)).encode()).hexdigest()[:20]


def _temp_beside(path: Path) -> tuple[int, str]:
    """A temporary file in the destination's folder (so os.replace is atomic), with the usual permissions."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return fd, tmp


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_token_cache(bin_path: Path, chunks: Iterable[np.ndarray], dtype: np.dtype, meta: dict) -> int:
    """Streams `chunks` of ids into `bin_path` through a temporary file, then publishes the metadata.

    Memory stays at one chunk whatever the corpus size. Returns the number of tokens written. On any error,
    including Ctrl-C, the temporary file is removed and an existing cache is left as it was.
    """
    bin_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_beside(bin_path)
    n_tokens = 0
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(np.asarray(chunk, dtype=dtype).tobytes())
                n_tokens += len(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, bin_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    meta = {**meta, "format": CACHE_FORMAT, "dtype": dtype.name, "n_tokens": n_tokens}
    _atomic_write_text(bin_path.with_suffix(".json"), json.dumps(meta, indent=2))
    return n_tokens


def read_cache_meta(bin_path: Path, tokenizer_fingerprint: str) -> dict | None:
    """The metadata of a finished cache at `bin_path`, None when there is none; refuses a cache that does not
    match this tokenizer or whose ids file has the wrong size."""
    meta_path = bin_path.with_suffix(".json")
    if not meta_path.is_file() or not bin_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise UserInputError(
            f"token cache {meta_path} is not valid JSON ({err}); delete it and it is rebuilt."
        ) from None
    if meta.get("tokenizer") != tokenizer_fingerprint:
        raise UserInputError(
            f"token cache {bin_path} was built by tokenizer {meta.get('tokenizer')!r}, but this run uses "
            f"{tokenizer_fingerprint!r}; delete {bin_path} and {meta_path} (they are rebuilt), or set "
            "--data.cache_dir to another folder."
        )
    expected_bytes = meta.get("n_tokens", -1) * np.dtype(meta.get("dtype", "uint16")).itemsize
    if bin_path.stat().st_size != expected_bytes:
        raise UserInputError(
            f"token cache {bin_path} holds {bin_path.stat().st_size} bytes, its metadata promises {expected_bytes}; "
            f"delete {bin_path} and {meta_path} and they are rebuilt."
        )
    return meta


def open_tokens(bin_path: Path, meta: dict) -> np.ndarray:
    """A read-only memory map of the ids: pages are read on demand, so RAM does not grow with the corpus."""
    return np.memmap(bin_path, dtype=np.dtype(meta["dtype"]), mode="r", shape=(meta["n_tokens"],))


def batched(items: Iterable, size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
