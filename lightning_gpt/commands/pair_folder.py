"""The folder `lightning-gpt make-pairs` writes: its work area of shards and settings (so a run can resume), and the
preference pairs in the hub's layout (parquet per split, a README whose YAML header declares them), which
`data_modules.UltraFeedback` reads with --data.path."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from lightning_gpt.atomic import write_atomic
from lightning_gpt.errors import UserInputError

WORK = ".make-pairs"  # the shards and the settings of a run, inside --out
CONFIG = "default"  # the dataset's config name, as in the hub mirrors
# The rules that made a run's shards, recorded in its settings so that a resume never mixes two: 2 = an answer cut at
# --max_new_tokens never enters a pair (1, recorded as no "format", let such answers in).
FORMAT = 2
COLUMNS = ("prompt", "prompt_id", "chosen", "rejected", "messages", "score_chosen", "score_rejected")


def save_shard(path: Path, shard: dict) -> None:
    write_atomic(path, json.dumps(shard, ensure_ascii=False))


def file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def claim_out(out: Path, settings: dict) -> Path:
    """The work folder of --out: a new one, or that of an earlier run with the same settings (a resume)."""
    work = out / WORK
    saved = work / "settings.json"
    if saved.is_file():
        earlier = json.loads(saved.read_text())
        if earlier.get("format") != settings.get("format"):
            raise UserInputError(
                f"--out {out} holds a make-pairs run of another version (pairs format {earlier.get('format', 1)}, this "
                f"one writes {settings.get('format')}); pass another --out, or delete {work} to start over."
            )
        changed = sorted(key for key in settings.keys() | earlier.keys() if settings.get(key) != earlier.get(key))
        if changed:
            raise UserInputError(
                f"--out {out} holds a make-pairs run with other settings ({', '.join(changed)} differ): pass the "
                f"same flags to resume it, another --out, or delete {work} to start over."
            )
        return work
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserInputError(f"--out {out} exists and is not a make-pairs output; pass a new folder.")
    write_atomic(saved, json.dumps(settings, indent=1))
    return work


def discard_work(out: Path) -> None:
    """Deletes the work folder of --out (a run whose shards are of no use), so that other flags may use --out."""
    shutil.rmtree(out / WORK, ignore_errors=True)


def pair_schema():
    import pyarrow as pa

    turns = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    return pa.schema(
        [("prompt", pa.string()), ("prompt_id", pa.string()), ("chosen", turns), ("rejected", turns)]
        + [("messages", turns), ("score_chosen", pa.float64()), ("score_rejected", pa.float64())]
    )


def write_dataset(out: Path, splits: dict[str, list[dict]], settings: dict) -> None:
    """One parquet file per split and the README whose YAML header declares them (the hub's layout)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    entries = []
    for split, rows in splits.items():
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=pair_schema()), buffer)
        write_atomic(out / CONFIG / f"{split}-00000-of-00001.parquet", buffer.getvalue())
        entries.append(f"  - split: {split}\n    path: {CONFIG}/{split}-*")
    header = f"---\nconfigs:\n- config_name: {CONFIG}\n  data_files:\n" + "\n".join(entries) + "\n---\n"
    text = (
        "\nPreference pairs made by `lightning-gpt make-pairs`: the best (chosen) and the worst (rejected) of the "
        "policy's sampled answers to each prompt, by the reward model's score. Settings:\n\n```json\n"
        + json.dumps(settings, indent=1)
        + "\n```\n"
    )
    write_atomic(out / "README.md", header + text)
