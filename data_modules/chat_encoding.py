"""What the chat DataModules (ChatMessages, UltraChat200k, ContextChats) share in encoding: conversations, each a
list of {role, content}, rendered through the chat template into a cache of three arrays: the token ids, the loss
mask (the assistant's tokens and the <|end|> closing each answer) and each sample's length. A conversation longer
than the context is split at turn boundaries; a malformed one is skipped and counted, and a split with too many of
them is refused."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from data_modules.holdout import held_out_rows, part_rows, row_keys, split_label
from data_modules.token_cache import token_dtype
from lightning_gpt.chat import fit_to_length, message_problem
from lightning_gpt.errors import UserInputError
from lightning_gpt.tokenizer import AnyTokenizer

log = logging.getLogger(__name__)
_WHERE = re.compile(r"^(message|turn) \d+ (\(\w+\) )?(has |is )?")


@dataclass(frozen=True)
class ChatEncoding:
    """How a chat DataModule's conversations become a cache.

    Args:
        messages_column: the column holding each conversation.
        max_bad_fraction: fail when more than this fraction of a split's rows is malformed.
        max_tokens: the longest sample: the model's context plus the one token it predicts last.
    """

    messages_column: str
    max_bad_fraction: float
    max_tokens: int

    def variant(self) -> tuple[str, ...]:
        """For `cache_variant`: where long conversations are split, and which column they come from."""
        return f"max_tokens={self.max_tokens}", f"messages_column={self.messages_column}"

    @staticmethod
    def array_dtypes(vocab_size: int) -> dict[str, np.dtype]:
        return {"tokens": token_dtype(vocab_size), "mask": np.dtype(np.uint8), "lengths": np.dtype(np.int32)}

    def held_out_rows(self, rows, val_fraction: float) -> np.ndarray:
        """Which rows of the train split are validation rows: those whose stable hash falls below `val_fraction`.
        Keyed by prompt_id, so that a prompt asked twice stays on one side. At least one row, so that a small split
        still validates."""
        return held_out_rows(row_keys(rows, self.messages_column), val_fraction)

    def encode(
        self,
        rows,
        part: str | None,
        held_out: Callable[[object], np.ndarray],
        val_fraction: float | None,
        tokenizer: AnyTokenizer,
        stats: dict,
        conversations: Callable[[object], object] | None = None,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Chunks of the cache of a split's `rows`, one per 512 rows, counted into `stats`. Where `part` is "train"
        or "val", only the rows on that side of `held_out(rows)` (a mask) are read; `conversations` builds the
        conversations of those rows where the split does not hold them (ContextChats)."""
        stats.update(rows=len(rows), skipped=0, samples=0, split_conversations=0, dropped_exchanges=0, skip_reasons={})
        numbers = range(len(rows))  # each kept row's number in the split, for the messages that name a row
        if part:
            keep, stats["holdout"] = part_rows(held_out(rows), part, val_fraction)
            numbers = np.flatnonzero(keep)
            rows = rows.select(numbers)  # the part's rows only, before any conversation is built from them
        if conversations is not None:
            rows = conversations(rows)
        row_numbers = iter(numbers)
        for batch in rows.iter(batch_size=512):
            ids: list[int] = []
            mask: list[int] = []
            lengths: list[int] = []
            for messages in batch[self.messages_column]:
                row = int(next(row_numbers))
                problem = message_problem(messages)
                if problem:
                    stats["skipped"] += 1
                    reason = _WHERE.sub("", problem)  # "message 3 (user) has empty content" -> "empty content"
                    stats["skip_reasons"][reason] = stats["skip_reasons"].get(reason, 0) + 1
                    stats.setdefault("skip_example", f"row {row}: {problem}")
                    continue
                pieces, dropped = fit_to_length(tokenizer, messages, self.max_tokens)
                stats["dropped_exchanges"] += dropped
                stats["split_conversations"] += len(pieces) > 1
                for piece_ids, piece_mask in pieces:
                    ids += piece_ids
                    mask += piece_mask
                    lengths.append(len(piece_ids))
            stats["samples"] += len(lengths)
            yield {"tokens": np.array(ids, dtype=np.int64), "mask": np.array(mask), "lengths": np.array(lengths)}

    def check(self, stats: dict, path: str, split: str, part: str | None, val_fraction: float | None) -> None:
        """Logs what was skipped, split or dropped; refuses a split with too many malformed rows, or a held-out part
        with no usable conversation."""
        if stats["skipped"]:
            log.warning(
                "%s %s: skipped %d of %d malformed rows %s; e.g. %s",
                *(path, split_label(split, part), stats["skipped"], stats["rows"]),
                *(stats["skip_reasons"], stats["skip_example"]),
            )
        used = stats["rows"] - stats.get("holdout", {}).get("excluded_rows", 0)
        if part == "val" and stats["samples"] == 0:
            raise UserInputError(
                f"--data.path {path} split {split!r}: the {used} rows held out for validation by "
                f"--data.val_fraction {val_fraction} hold no usable conversation; raise --data.val_fraction or "
                "set --data.val_split to another split."
            )
        if stats["skipped"] > self.max_bad_fraction * used:
            raise UserInputError(
                f"--data.path {path} split {split!r}: {stats['skipped']} of {used} rows are malformed "
                f"({stats['skip_example']}); is --data.messages_column {self.messages_column!r} a list of "
                "{role, content} with roles system/user/assistant? (--data.max_bad_fraction sets the tolerance)"
            )
        if stats["split_conversations"] or stats["dropped_exchanges"]:
            log.warning(
                "%s %s: %d conversations longer than %d tokens split at turn boundaries; %d exchanges "
                "too long even alone were dropped",
                *(path, split_label(split, part), stats["split_conversations"]),
                *(self.max_tokens, stats["dropped_exchanges"]),
            )
