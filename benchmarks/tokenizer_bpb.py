"""Tokenizers compared on one scale: tokens per byte and per character of text, and validation bits per byte after
the same training.

    python benchmarks/tokenizer_bpb.py                                   # WikiText mirror in ../shared, CPU, tiny model
    python benchmarks/tokenizer_bpb.py --data PATH --tokenizers gpt2 bpe-4096 char --steps 200
    python benchmarks/tokenizer_bpb.py --text FILE.txt                   # one long text, e.g. not in English

--text takes one plain UTF-8 text file (a book, say) wherever it lies: it is cut at line breaks into documents of
about --doc_chars characters, written as a .jsonl into a temporary folder (never into the repository), and read from
there; 1% of the documents (TextFiles' val_fraction) are held out for validation. docs/benchmarks.md has the command
that makes the Spanish text of its figures from a Debian package.

Each tokenizer trains the same model (the smoke config's tiny preset; only the vocabulary rows differ) for the same
steps of the same windows (batch x block_size tokens), through the real CLI: `fit -c configs/pretrain_text.yaml -c
configs/smoke.yaml --data.tokenizer SPEC`, one validation over the whole validation split at the end. Bits per
byte (`val_bpb`) is the validation NLL over the split's UTF-8 bytes: comparable whatever the tokenizer. Fewer tokens
per byte means more text per step for the same compute. The last line is each tokenizer's val_bpb over gpt2's.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WIKITEXT = REPO.parent / "shared/data/hub/Salesforce/wikitext"


def run_one(data: str, spec: str, steps: int, workdir: Path) -> dict:
    from lightning_gpt.cli import run

    started = time.perf_counter()
    cli = run(
        [
            "fit", "-c", str(REPO / "configs/pretrain_text.yaml"), "-c", str(REPO / "configs/smoke.yaml"),
            "--data.path", data, "--data.tokenizer", spec, "--trainer.max_steps", str(steps),
            "--trainer.val_check_interval", str(steps), "--trainer.limit_val_batches", "null",
            "--trainer.logger.init_args.save_dir", str(workdir), "--trainer.logger.init_args.version", spec,
            "--trainer.enable_progress_bar", "false",
        ]
    )  # fmt: skip
    seconds = time.perf_counter() - started
    dm, metrics = cli.datamodule, cli.trainer.callback_metrics
    stats = dm.text_stats("val")
    return {
        "tokenizer": spec,
        "vocab": dm.vocab_size,
        "tokens_per_byte": stats["targets"] / stats["bytes"],
        "tokens_per_char": stats["targets"] / stats["chars"],
        "val_bpb": float(metrics["val_bpb"]),
        "val_loss": float(metrics["val_loss"]),
        "seconds": seconds,
    }


def text_documents(path: Path, doc_chars: int) -> list[str]:
    """The file's text cut at line breaks into documents of about `doc_chars` characters (blank lines dropped)."""
    docs, lines, size = [], [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        lines.append(line)
        size += len(line) + 1
        if size >= doc_chars:
            docs.append("\n".join(lines))
            lines, size = [], 0
    if lines:
        docs.append("\n".join(lines))
    return docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(WIKITEXT), help="a text source TextFiles reads (folder, glob, hub id)")
    parser.add_argument("--tokenizers", nargs="+", default=["gpt2", "bpe-4096", "char"])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--text", help="one plain UTF-8 text file to compare on instead of --data (see above)")
    parser.add_argument("--doc_chars", type=int, default=4000, help="--text: characters per document, about")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("LIGHTNING_GPT_CACHE", str(Path(tmp) / "cache"))  # tokenizers trained afresh
        data = args.data
        if args.text:
            docs = text_documents(Path(args.text).expanduser(), args.doc_chars)
            data = str(Path(tmp) / "documents.jsonl")
            Path(data).write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs), "utf-8")
            print(f"{args.text}: {len(docs)} documents of about {args.doc_chars} characters")
        results = [run_one(data, spec, args.steps, Path(tmp)) for spec in args.tokenizers]
    print(f"\ndata: {args.text or args.data}; {args.steps} steps of the same windows for each tokenizer")
    header = ("tokenizer", "vocab", "tokens/char", "tokens/byte", "val_bpb", "val_loss", "time")
    print("{:<10} {:>7} {:>12} {:>12} {:>8} {:>9} {:>7}".format(*header))
    for r in results:
        print(
            f"{r['tokenizer']:<10} {r['vocab']:>7} {r['tokens_per_char']:>12.3f} {r['tokens_per_byte']:>12.3f} "
            f"{r['val_bpb']:>8.3f} {r['val_loss']:>9.3f} {r['seconds']:>6.0f}s"
        )
    base = next((r for r in results if r["tokenizer"] == "gpt2"), results[0])
    print(
        "val_bpb / "
        + base["tokenizer"]
        + ": "
        + json.dumps({r["tokenizer"]: round(r["val_bpb"] / base["val_bpb"], 3) for r in results})
    )


if __name__ == "__main__":
    main()
