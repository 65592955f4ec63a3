"""`lightning-gpt export`: a checkpoint as a Hugging Face transformers model folder (the conversion: export_model.py
and export_tokenizer.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lightning_gpt.commands import args as flags

DTYPES = ("bfloat16", "float16", "float32")
DESCRIPTION = (
    "Write a checkpoint as a Hugging Face model folder (LlamaForCausalLM weights in safetensors, config.json, "
    "generation_config.json, and a fast tokenizer with the chat template for chat models). Needs "
    'pip install -e ".[hf]".'
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    flags.add_checkpoint(parser, "a pretraining, SFT or DPO checkpoint", device=False)  # converted on the CPU
    parser.add_argument("--out", required=True, help="a new folder to write (must not exist or be empty)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="the weights' dtype")


def run(args: argparse.Namespace) -> Path:
    from lightning_gpt.commands.export_model import export

    path = export(args.ckpt_path, args.out, args.dtype)
    print(f"wrote {path}")
    return path
