"""Your own text for pretraining: a folder, a glob or a file of `.txt`, `.md` or `.jsonl` files, or any hub dataset
(id, or a local folder in the hub's layout) with a text column.

A `.txt` or `.md` file is one document, line breaks kept; a `.jsonl` file holds one document per line, in
`text_column`; a hub dataset holds one document per row. One end-of-text follows each document. Validation: the
source's `validation` split where it has one, else `val_fraction` of the documents, held out of training by a
stable hash of their text (the same documents in every run, whatever the file order).
"""

from __future__ import annotations

import glob
import hashlib
from collections.abc import Iterator
from pathlib import Path

from data_modules.holdout import held_out_rows, part_rows
from data_modules.token_stream import TokenStream
from lightning_gpt.errors import UserInputError

TEXT_SUFFIXES = (".txt", ".md")  # one document per file
JSONL_SUFFIXES = (".jsonl",)  # one document per line
_HUB_LAYOUT = ("*.parquet", "*.arrow", "dataset_dict.json", "dataset_info.json")


def local_text_files(path: str) -> list[Path] | None:
    """The text files `path` names (a file, a folder, searched recursively, or a glob), sorted; None where `path` is
    a hub id or a local folder in the hub's layout. Raises where a local path holds no such file."""
    found_in = None
    if glob.has_magic(path):
        files = [Path(p) for p in glob.glob(str(Path(path).expanduser()), recursive=True)]
        found_in = "matches"
    else:
        local = Path(path).expanduser()
        if local.is_file():
            files = [local]
        elif local.is_dir():
            if _hub_layout(local):
                return None
            files = [p for p in local.rglob("*") if not any(s.startswith(".") for s in p.relative_to(local).parts)]
            found_in = "holds"
        elif path.startswith((".", "/", "~")):
            raise UserInputError(
                f"--data.path {path}: no such file or folder. Pass a folder, a glob (quoted, e.g. 'notes/**/*.md'), "
                "a .txt/.md/.jsonl file, or a hub dataset id."
            )
        else:
            return None  # a hub id
    files = sorted(p for p in files if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES + JSONL_SUFFIXES)
    if not files:
        raise UserInputError(
            f"--data.path {path} {found_in or 'is'} no .txt, .md or .jsonl file. Pass a folder or a glob of such files "
            "(e.g. --data.path 'corpus/**/*.txt'), or a hub dataset id or a folder in the hub's layout."
        )
    return files


def _hub_layout(folder: Path) -> bool:
    """A folder `datasets.load_dataset` reads as a dataset: data in parquet/arrow, or a README that declares configs."""
    if any(next(folder.rglob(pattern), None) for pattern in _HUB_LAYOUT):
        return True
    readme = folder / "README.md"
    return (
        readme.is_file()
        and readme.read_text(errors="replace").startswith("---")
        and "configs:" in readme.read_text(errors="replace")
    )


def load_text_files(files: list[Path], text_column: str, path: str, scratch_dir: str):
    """One dataset with a `text_column` column: a row per .txt/.md file (the whole file), then a row per line of the
    .jsonl files. Read by `datasets.load_dataset("text" | "json")` into `scratch_dir`."""
    import datasets

    parts = []
    plain = [str(f) for f in files if f.suffix.lower() in TEXT_SUFFIXES]
    jsonl = [str(f) for f in files if f.suffix.lower() in JSONL_SUFFIXES]
    try:
        if plain:
            rows = datasets.load_dataset(
                "text", data_files=plain, sample_by="document", split="train", cache_dir=scratch_dir
            )
            parts.append(rows.rename_column("text", text_column) if text_column != "text" else rows)
        if jsonl:
            rows = datasets.load_dataset("json", data_files=jsonl, split="train", cache_dir=scratch_dir)
            if text_column not in rows.column_names:
                raise UserInputError(
                    f"--data.path {path}: the .jsonl files have columns {rows.column_names}, no {text_column!r}; "
                    "set --data.text_column to the column with the text."
                )
            parts.append(rows.select_columns([text_column]))
    except datasets.exceptions.DatasetGenerationError as err:
        cause = err.__cause__ or err
        raise UserInputError(
            f"--data.path {path}: could not read the files ({type(cause).__name__}: {cause}); .txt and .md files must "
            "be UTF-8 text, .jsonl files one JSON object per line."
        ) from None
    if len(parts) == 1:
        return parts[0]
    if parts[0].features[text_column] != parts[1].features[text_column]:
        raise UserInputError(
            f"--data.path {path}: column {text_column!r} of the .jsonl files holds "
            f"{parts[1].features[text_column]}, not text; set --data.text_column to the column with the text."
        )
    return datasets.concatenate_datasets(parts)


class TextFiles(TokenStream):
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
            text (at least one document where there are two or more).
        test_split: the split tested on. None (the default): the hub dataset's `test` split if it has one, else the
            documents held out for validation.
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
        return (*variant, *self.holdout_variant(role))

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
        self.check_text_column(rows)
        stats = self.encode_stats
        part = self.holdout_part(getattr(self, "encode_role", None))
        texts = self._texts(rows)
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
        for text in self.count_text(texts, extra_words=1):  # + the end-of-text after each document
            count += 1
            yield text
        if count == 0:
            raise UserInputError(
                f"--data.path {self.path}: {part or 'the'} split holds no text (every document "
                f"in --data.text_column {self.text_column!r} is empty); point --data.path at files with text."
            )
