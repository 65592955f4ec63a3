"""Your own text files: which files a `--data.path` names (a folder, searched recursively, a glob, or one file), and
reading them into rows. A `.txt` or `.md` file is one document, line breaks kept; a `.jsonl` file holds one document
per line, in the text column. A local folder in the Hugging Face hub's layout is a dataset, not text files."""

from __future__ import annotations

import glob
from pathlib import Path

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
