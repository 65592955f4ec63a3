"""`lightning-gpt evaluate-chat`: ROUGE-L of a chat model's first answers against UltraChat's references."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable

from lightning_gpt.chat import message_problem, render_prompt
from lightning_gpt.commands import args as flags
from lightning_gpt.errors import UserInputError
from lightning_gpt.tokenizer import AnyTokenizer

DESCRIPTION = (
    "ROUGE-L F1 (torchmetrics, no stemming) between the model's greedy answer to each sampled conversation's opening "
    "user turn (after its system turn, if any) and the reference first assistant turn."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    flags.add_checkpoint(parser, "a chat (SFT or DPO) checkpoint")
    parser.add_argument("--data_path", default="HuggingFaceH4/ultrachat_200k")
    parser.add_argument("--split", default="test_sft")
    parser.add_argument("--num_samples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0, help="which conversations are sampled")
    parser.add_argument("--max_new_tokens", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=16)


def opening_turns(
    tokenizer: AnyTokenizer, conversations: Iterable, limit: int
) -> tuple[list[list[int]], list[str], list[str]]:
    """Prompts (system turn if any, then the first user turn) and reference first answers of up to `limit`
    well-formed conversations, and why each malformed one met on the way was skipped."""
    prompts, references, problems = [], [], []
    for messages in conversations:
        problem = message_problem(messages)
        if problem is not None:
            problems.append(problem)
            continue
        opening = 2 if messages[0]["role"] == "system" else 1
        prompts.append(render_prompt(tokenizer, messages[:opening]))
        references.append(messages[opening]["content"])
        if len(prompts) == limit:
            break
    return prompts, references, problems


def _no_usable_rows(where: str, total: int, problems: list[str]) -> str:
    if not problems:
        return f"{where} has no rows; pass a split that holds conversations."
    return (
        f"{where}: all {total} conversations are malformed, so there is nothing to score (the first: "
        f"{problems[0]}). Pass a split in UltraChat's format: messages with an optional system turn, then user and "
        "assistant turns alternating, starting with the user."
    )


def run(args: argparse.Namespace) -> dict:
    from dataclasses import replace

    import torch
    from torchmetrics.text import ROUGEScore

    from data_modules.hf_loading import load_hf_split
    from lightning_gpt.chat import chat_stop_ids, is_chat
    from lightning_gpt.generate import generate
    from lightning_gpt.loading import load_checkpoint

    for flag in ("num_samples", "batch_size"):
        if getattr(args, flag) <= 0:
            raise UserInputError(f"--{flag} must be a positive integer, got {getattr(args, flag)}")
    settings = flags.checked_settings(max_new_tokens=args.max_new_tokens, temperature=0)
    model, tokenizer = load_checkpoint(args.ckpt_path, args.device)
    if not is_chat(tokenizer):
        raise UserInputError(f"--ckpt_path {args.ckpt_path} has no chat tokens; evaluate-chat needs a chat model.")
    settings = replace(settings, stop_ids=chat_stop_ids(tokenizer))
    rows = load_hf_split(args.data_path, None, args.split, flag="--data_path")
    where = f"--data_path {args.data_path} split {args.split!r}"
    if "messages" not in rows.column_names:
        raise UserInputError(
            f"{where} has no 'messages' column (it has {rows.column_names}); pass a chat dataset in UltraChat's format."
        )
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(args.seed)).tolist()
    prompts, references, problems = opening_turns(tokenizer, (rows[i]["messages"] for i in order), args.num_samples)
    if not prompts:
        raise UserInputError(_no_usable_rows(where, len(rows), problems))
    if len(prompts) < args.num_samples:
        skipped = f" ({len(problems)} skipped as malformed; the first: {problems[0]})" if problems else ""
        print(
            f"lightning-gpt: warning: {where} has only {len(prompts)} usable conversations{skipped}, fewer than "
            f"--num_samples {args.num_samples}; the score averages over those {len(prompts)}.",
            file=sys.stderr,
        )
    rouge = ROUGEScore(rouge_keys="rougeL")
    for start in range(0, len(prompts), args.batch_size):
        outputs = generate(model, prompts[start : start + args.batch_size], settings)
        rouge.update([tokenizer.decode(o) for o in outputs], references[start : start + args.batch_size])
        done = min(start + args.batch_size, len(prompts))
        print(f"evaluate-chat: {done}/{len(prompts)} conversations answered", file=sys.stderr, flush=True)
    result = {
        "rougeL_fmeasure": float(rouge.compute()["rougeL_fmeasure"]),
        "samples": len(prompts),
        "split": args.split,
        "max_new_tokens": args.max_new_tokens,
        "decoding": "greedy",
    }
    print(json.dumps(result))
    return result
