"""Tokenizers compared on one scale: tokens per byte of text, and validation bits per byte after the same training.

    python benchmarks/tokenizer_bpb.py                                   # WikiText mirror in ../shared, CPU, tiny model
    python benchmarks/tokenizer_bpb.py --data PATH --tokenizers gpt2 bpe-4096 char --steps 200

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
        "val_bpb": float(metrics["val_bpb"]),
        "val_loss": float(metrics["val_loss"]),
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(WIKITEXT), help="a text source TextFiles reads (folder, glob, hub id)")
    parser.add_argument("--tokenizers", nargs="+", default=["gpt2", "bpe-4096", "char"])
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("LIGHTNING_GPT_CACHE", str(Path(tmp) / "cache"))  # tokenizers trained afresh
        results = [run_one(args.data, spec, args.steps, Path(tmp)) for spec in args.tokenizers]
    print(f"\ndata: {args.data}; {args.steps} steps of the same windows for each tokenizer")
    print(f"{'tokenizer':<10} {'vocab':>7} {'tokens/byte':>12} {'val_bpb':>8} {'val_loss':>9} {'time':>7}")
    for r in results:
        print(
            f"{r['tokenizer']:<10} {r['vocab']:>7} {r['tokens_per_byte']:>12.3f} {r['val_bpb']:>8.3f} "
            f"{r['val_loss']:>9.3f} {r['seconds']:>6.0f}s"
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
