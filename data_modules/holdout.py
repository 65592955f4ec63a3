"""Validation held out of a training split: a stable hash of each row's key (its prompt_id, a passage, a document's
text) puts about `val_fraction` of the rows on the validation side, the same rows in every run and on every
machine, whatever the row order. For the datasets without a validation split of their own (UltraChat-200k,
UltraFeedback, SQuAD's passages, your own text); TokenDataModule keeps which part each role reads."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from lightning_gpt.errors import UserInputError


def holdout_hash(key: str) -> int:
    """A 64-bit hash that is the same in every run and on every machine (Python's hash() of a str is not)."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()[:8], "big")


def row_key(prompt_id, messages) -> str:
    """What identifies a conversation: its prompt_id, or its messages where it has none."""
    if prompt_id not in (None, ""):
        return str(prompt_id)
    return json.dumps(messages, sort_keys=True, ensure_ascii=False, default=str)


def row_keys(rows, fallback_column: str, fallback: Callable[[object], object] | None = None) -> Iterator[str]:
    """Each row's key: its prompt_id, or where it has none (or the split has no such column), its
    `fallback_column` value (passed through `fallback`, e.g. to keep only the prompt part of a conversation)."""

    def from_column(value) -> str:
        return row_key(None, fallback(value) if fallback else value)

    if "prompt_id" not in rows.column_names:
        for batch in rows.select_columns([fallback_column]).iter(batch_size=1024):
            yield from (from_column(value) for value in batch[fallback_column])
        return
    index = 0
    for batch in rows.select_columns(["prompt_id"]).iter(batch_size=4096):
        for prompt_id in batch["prompt_id"]:
            if prompt_id in (None, ""):  # rare: read that row's fallback column
                yield from_column(rows[index][fallback_column])
            else:
                yield row_key(prompt_id, None)
            index += 1


def held_out_rows(keys: Iterable[str], val_fraction: float) -> np.ndarray:
    """Which rows are validation rows: those whose stable hash falls below `val_fraction`. Keyed by prompt_id, so
    that a prompt asked twice stays on one side. At least one key's rows, so that a small split still validates."""
    hashes = np.array([holdout_hash(key) for key in keys], dtype=np.uint64)
    held = hashes < np.uint64(int(val_fraction * 2**64))
    if not held.any() and len(held) > 1:
        held = hashes == hashes.min()  # every row of that key: it stays on one side
    return held


def check_val_fraction(val_fraction: float, holds_out: bool, train_split: str) -> None:
    """Refuses a `--data.val_fraction` outside (0, 1) where validation is held out of the train split."""
    if not 0 <= val_fraction < 1 or (holds_out and val_fraction == 0):
        raise UserInputError(
            f"--data.val_fraction must be above 0 and below 1, not {val_fraction}: it is the share of "
            f"--data.train_split {train_split!r} held out for validation. Or set --data.val_split to "
            "another split."
        )


def holdout_part(holds_out: bool, role: str | None) -> str | None:
    """Which part of the train split a role's cache holds: "val" (the held-out rows), "train" (the rest), or None
    (a whole split)."""
    return role if holds_out and role in ("train", "val") else None


def part_rows(held: np.ndarray, part: str, val_fraction: float) -> tuple[np.ndarray, dict]:
    """The rows of `part` ("val" or "train") given the held-out mask, and the stats that say so in a cache."""
    keep = held if part == "val" else ~held
    return keep, {"val_fraction": val_fraction, "part": part, "excluded_rows": int((~keep).sum())}


def split_label(split: str, part: str | None) -> str:
    """How a log line names what it read: `split 'train'`, or with a held-out part `split 'train' (validation part)`,
    so that the two caches of one split are told apart."""
    names = {"train": "training part", "val": "validation part"}
    return f"split {split!r} ({names[part]})" if part in names else f"split {split!r}"
