"""Your own text for pretraining: a folder, a glob or a file of `.txt`, `.md` or `.jsonl` files (read by
data_modules/local_text.py), or any hub dataset (id, or a local folder in the hub's layout) with a text column.

A `.txt` or `.md` file is one document, line breaks kept; a `.jsonl` file holds one document per line, in
`text_column`; a hub dataset holds one document per row. One end-of-text follows each document. Validation: the
source's `validation` split where it has one, else `val_fraction` of the documents, held out of training by a
stable hash of their text (the same documents in every run, whatever the file order); a corpus too small for that
(fewer than 1 / val_fraction documents: under 100 at 1%) holds out the last `val_fraction` of its token stream.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from data_modules.base import TokenDataModule
from data_modules.holdout import held_out_rows, part_rows
from data_modules.local_text import load_text_files, local_text_files
from data_modules.token_stream import (
    check_text_column,
    count_text,
    encode_documents,
    eval_windows,
    sample_windows,
    stream_dtypes,
    text_stats,
    train_windows,
)
from data_modules.tokenizer_setting import TokenizerSetting
from lightning_gpt.errors import UserInputError


class TextFiles(TokenDataModule):
    """Your own text as one stream of tokens per split, documents separated by end-of-text, served as windows of
    `block_size` tokens.

    Args:
        path: a folder (searched recursively), a glob (e.g. 'corpus/**/*.md') or a file of .txt/.md files (one
            document each) and .jsonl files (one document per line); or a hub dataset id, or a local folder in the
            hub's layout, with one document per row.
        name: the hub dataset's config name, if it has several.
        text_column: the column holding the text, in .jsonl files and hub datasets.
        train_split: the hub dataset's split trained on (local files have only this one).
        val_split: the split validated on. None (the default): the hub dataset's `validation` split if it has one,
            else `val_fraction` of the training documents, held out from training. The train split itself: always
            hold out.
        val_fraction: the share of the training documents held out for validation, picked by a stable hash of their
            text (at least one document where there are two or more); with fewer than 1 / val_fraction documents,
            the share of the token stream held out from its end instead (at least 2 tokens: one target).
        test_split: the split tested on. None (the default): the hub dataset's `test` split if it has one, else the
            documents held out for validation.
        tokenizer: gpt2 (GPT-2's BPE, shipped), char (the characters of the training split, plus <|unk|>),
            bpe-N (a byte-level BPE of N tokens, trained on the training split with Hugging Face `tokenizers`),
            or the path of a checkpoint whose tokenizer to use. A trained one is cached beside the token caches
            and stored in every checkpoint. Unset: the one of --model.init_from (the CLI fills it in), else gpt2.
        **kwargs: see `TokenDataModule` (block_size, batch_size, num_workers, cache_dir, seed).
    """

    def __init__(
        self,
        path: str,
        name: str | None = None,
        text_column: str = "text",
        train_split: str = "train",
        val_split: str | None = None,
        val_fraction: float = 0.01,
        test_split: str | None = None,
        tokenizer: str | None = None,
        **kwargs,
    ) -> None:
        self.text_column = text_column
        self.required_columns = (text_column,)
        self.val_fraction = val_fraction
        self._asked = {"val": val_split, "test": test_split}
        self._resolved = False
        self.holds_out = True  # until the source's splits are read (check_splits)
        super().__init__(
            path=path,
            name=name,
            train_split=train_split,
            val_split=val_split or train_split,
            test_split=test_split or train_split,
            tokenizer_setting=TokenizerSetting(tokenizer),
            **kwargs,
        )

    # --- where the data and the splits come from -------------------------------------------------------------

    def local_files(self) -> list[Path] | None:
        """The text files of `path`, or None for a hub dataset."""
        return local_text_files(self.path)

    def check_splits(self) -> None:
        if not self._resolved:  # whether validation is held out depends on the source's splits: read them first
            self._resolve_splits()
            self._resolved = True
        super().check_splits()

    def _resolve_splits(self) -> None:
        """Picks the validation and test splits: those asked for, else the source's own, else the held-out part."""
        train = self.splits["train"]
        if self.local_files() is not None:
            for role, asked in self._asked.items():
                if asked not in (None, train):
                    raise UserInputError(
                        f"--data.{role}_split {asked!r}: --data.path {self.path} is local text files, one split; "
                        f"leave --data.{role}_split unset to validate on documents held out of it."
                    )
            available: list[str] = [train]
        else:
            available = self._hub_split_names()
        val = self._asked["val"] or ("validation" if "validation" in available else train)
        test = self._asked["test"] or ("test" if "test" in available else val)
        self.splits.update(val=val, test=test)
        self.holds_out = val == train

    def _hub_split_names(self) -> list[str]:
        import datasets

        local = Path(self.path).expanduser()
        try:
            return list(datasets.get_dataset_split_names(str(local) if local.is_dir() else self.path, self.name))
        except Exception:  # offline or unknown: loading the train split will say so clearly
            return []

    def holdout_part(self, role: str | None) -> str | None:
        """As for any DataModule, but a test split left unset reads the held-out documents, like validation."""
        if role is None or self.splits.get(role) != self.splits["train"]:
            return None
        return super().holdout_part("train" if role == "train" else "val")

    def cache_variant(self, role: str | None = None) -> tuple[str, ...]:
        variant = [f"text_column={self.text_column}"]
        files = self.local_files()
        if files is not None:  # a glob's files are not under one folder: fingerprint them here
            listing = "|".join(f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
            variant.append("files=" + hashlib.sha256(listing.encode()).hexdigest()[:20])
        # "tail": a corpus of few documents holds out the tail of its stream (caches made before did not).
        return (*variant, *self.holdout_variant(role), *(("small=tail",) if self.holdout_part(role) else ()))

    def load_rows(self, split: str, scratch: str):
        files = self.local_files()
        if files is None:
            return super().load_rows(split, scratch)
        return load_text_files(files, self.text_column, self.path, scratch)

    # --- documents -----------------------------------------------------------------------------------------------

    def _texts(self, rows) -> Iterator[str]:
        """The non-empty documents of a split (an empty file or row is no document)."""
        for batch in rows.iter(batch_size=1024):
            yield from (text for text in batch[self.text_column] if text and text.strip())

    def documents(self, rows) -> Iterator[str]:
        check_text_column(rows, self.text_column, self.path)
        stats = self.encode_stats
        part = self.holdout_part(self.encode_role)
        texts = self._texts(rows)
        if part and self.holds_out_tokens(rows):
            part = None  # every document: encode_rows cuts the stream (a trained tokenizer sees the tail too)
        if part:
            held = held_out_rows(self._texts(rows), self.val_fraction)  # keyed by the text itself
            if len(held) < 2:
                raise UserInputError(
                    f"--data.path {self.path} holds {len(held)} non-empty document(s) (column --data.text_column "
                    f"{self.text_column!r}); holding some out for validation needs at least 2. Add documents (or split "
                    "a long file into several)."
                )
            keep, stats["holdout"] = part_rows(held, part, self.val_fraction)
            texts = (text for text, kept in zip(texts, keep, strict=True) if kept)
        count = 0
        for text in count_text(texts, stats, extra_words=1):  # + the end-of-text after each document
            count += 1
            yield text
        if count == 0:
            raise UserInputError(
                f"--data.path {self.path}: {part or 'the'} split holds no text (every document "
                f"in --data.text_column {self.text_column!r} is empty); point --data.path at files with text."
            )

    # --- one stream of tokens, served as windows (data_modules/token_stream.py) -----------------------------------

    def array_dtypes(self):
        return stream_dtypes(self.vocab_size)

    def encode_rows(self, rows, split: str):
        part = self.holdout_part(self.encode_role)
        if part and self.holds_out_tokens(rows):
            yield self._stream_part(rows, part)
            return
        yield from encode_documents(self.documents(rows), self.tokenizer, self.encode_stats)

    # --- a corpus of few documents: validation is the tail of the token stream ----------------------------------

    def holds_out_tokens(self, rows) -> bool:
        """Whether the corpus has too few documents for `val_fraction` (less than one document's worth), so that
        validation is the stream's last tokens rather than whole documents (which would be a third of 3 files)."""
        return sum(1 for _ in self._texts(rows)) * self.val_fraction < 1

    def _stream_part(self, rows, part: str) -> dict[str, np.ndarray]:
        """The training part (all but the last `val_fraction` of the tokens, at least 2) or the validation part."""
        stats = self.encode_stats
        stream = np.concatenate([c["tokens"] for c in encode_documents(self.documents(rows), self.tokenizer, stats)])
        held = max(math.ceil(self.val_fraction * len(stream)), 2)
        cut = len(stream) - held
        tokens = stream[cut:] if part == "val" else stream[:cut]
        stats.update(self._decoded_counts(tokens))  # the part's own words and bytes, for word perplexity and bpb
        stats["holdout"] = {"val_fraction": self.val_fraction, "part": part, "by": "tokens", "val_tokens": held}
        return {"tokens": tokens}

    def _decoded_counts(self, tokens: np.ndarray) -> dict[str, int]:
        """Words (plus one per end-of-text, as count_text counts them), characters and UTF-8 bytes of a part of the
        stream, from its decoded text. A character cut by the part's edge decodes as U+FFFD: a few bytes off."""
        ids, eot = tokens.tolist(), self.tokenizer.eot_id
        counts = {"words": ids.count(eot), "chars": 0, "bytes": 0}
        start = 0
        for end in [*(i for i, t in enumerate(ids) if t == eot), len(ids)]:
            text = self.tokenizer.decode(ids[start:end]) if end > start else ""
            counts["words"] += len(text.split())
            counts["chars"] += len(text)
            counts["bytes"] += len(text.encode("utf-8"))
            start = end + 1
        return counts

    def train_dataset(self, base: Path, meta: dict):
        sampling = self.sampler_args(self.batch_size)
        dataset, sampler = train_windows(base, meta, self.block_size, sampling, self.splits["train"])
        return dataset, sampler, self.batch_size

    def train_sample_dataset(self, base: Path, meta: dict, batches: int):
        count = batches * self.eval_batch_size
        return sample_windows(base, meta, self.block_size, count, self.seed), self.eval_batch_size

    def eval_dataset(self, base: Path, meta: dict):
        return eval_windows(base, meta, self.block_size, self.tokenizer.eot_id), self.eval_batch_size

    def text_stats(self, role: str) -> dict | None:
        """Words, bytes and predicted tokens of a split (see `token_stream.text_stats`)."""
        return text_stats(self._cache(role)[1])
