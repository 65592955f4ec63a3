"""`lightning-gpt make-pairs`: on-policy preference pairs. The policy samples N answers to each of K prompts, the
reward model scores them, and the best and the worst answer of each prompt become one pair, written as a dataset
folder in the hub's layout that `data_modules.UltraFeedback` (and so the DPO config) reads with --data.path. Only
answers that ended (a stop token drawn within --max_new_tokens) are paired: DPO trains <|end|> after the answer, so a
cut one would teach the model to stop mid-sentence, and the reward model, reading the token before <|end|>, could not
tell it was cut.

Resumable: prompts are done in shards of --shard_size, each saved atomically under OUT/.make-pairs/ as it finishes;
a re-run with the same flags skips the shards it finds and rebuilds the dataset files from all of them. Each
generation batch is seeded from --seed and its first prompt's id, so a run killed and resumed writes the same
files as one that was not (on the same device).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import Counter
from pathlib import Path

from lightning_gpt.commands import args as flags
from lightning_gpt.commands.pair_folder import (
    COLUMNS,
    FORMAT,
    claim_out,
    discard_work,
    file_digest,
    save_shard,
    write_dataset,
)
from lightning_gpt.errors import UserInputError

DESCRIPTION = (
    "Sample --num_candidates answers per prompt with the policy, score them with the reward model, and write the best "
    "and the worst answer of each prompt as a preference pair (a dataset folder that --data.path of the DPO config "
    "reads). An answer cut at --max_new_tokens before it ended never enters a pair; prompts left with fewer than 2 "
    "finished answers, or whose answers are all the same or tie in score, give no pair. Re-running with the same "
    "flags resumes an interrupted run."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    flags.add_checkpoint(parser, "the policy: a chat (SFT or DPO) checkpoint")
    parser.add_argument("--reward_ckpt", required=True, help="a reward model (configs/reward_ultrafeedback.yaml)")
    parser.add_argument("--data_path", default="HuggingFaceH4/ultrafeedback_binarized", help="hub id or local folder")
    parser.add_argument("--split", default="train_prefs", help="read prompts from it; the pairs are written as it")
    parser.add_argument("--test_split", default="test_prefs", help="copied unchanged when the source has it ('' = no)")
    parser.add_argument("--num_prompts", type=int, default=1000, help="the first K usable prompts of the split")
    parser.add_argument("--num_candidates", type=int, default=4, help="answers sampled per prompt, at least 2")
    parser.add_argument("--out", required=True, help="the dataset folder to write (or to resume)")
    parser.add_argument("--max_new_tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.8, help="> 0: the candidates must differ")
    parser.add_argument("--top_p", type=float, default=0.95)
    parser.add_argument("--batch_size", type=int, default=32, help="sequences per generation and scoring batch")
    parser.add_argument("--shard_size", type=int, default=64, help="prompts per saved shard (what a resume redoes)")
    parser.add_argument("--seed", type=int, default=0)


def check_args(args: argparse.Namespace) -> None:
    """Refuses values that cannot work before anything is loaded, naming the flag."""
    limits = {"num_prompts": 1, "num_candidates": 2, "batch_size": 1, "shard_size": 1, "max_new_tokens": 1}
    for flag, least in limits.items():
        if getattr(args, flag) < least:
            why = " (a pair needs a best and a worst answer)" if flag == "num_candidates" else ""
            raise UserInputError(f"--{flag} must be at least {least}, got {getattr(args, flag)}{why}.")
    if args.temperature <= 0:
        raise UserInputError(f"--temperature must be above 0, got {args.temperature}: greedy answers are all the same.")
    flags.checked_settings(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p)


def load_split(path: str, split: str, flag: str = "--split"):
    """A split through data_modules.hf_loading, its errors naming this command's flags."""
    from data_modules.hf_loading import load_hf_split

    try:
        return load_hf_split(path, None, split, flag="--data_path")
    except UserInputError as err:
        message = str(err)
        raise UserInputError(f"{flag} {split!r}: {message}" if "Unknown split" in message else message) from None


def run_settings(args: argparse.Namespace, prompts: list) -> dict:
    """What decides a run's output: a resume must match it."""
    keys = ("data_path", "split", "num_prompts", "num_candidates", "max_new_tokens", "temperature", "top_p")
    return {
        "format": FORMAT,
        **{key: getattr(args, key) for key in keys},
        **{key: getattr(args, key) for key in ("batch_size", "shard_size", "seed")},
        "policy_sha256": file_digest(args.ckpt_path),
        "reward_sha256": file_digest(args.reward_ckpt),
        "prompt_ids_sha256": hashlib.sha256("\n".join(p.prompt_id for p in prompts).encode()).hexdigest(),
    }


def source_test_rows(args: argparse.Namespace) -> list[dict] | None:
    """The source's --test_split rows in the pairs' columns, or None when there is none to copy."""
    if not args.test_split or args.test_split == args.split:
        return None
    try:
        rows = load_split(args.data_path, args.test_split, "--test_split")
    except UserInputError:
        return None
    if not set(COLUMNS) <= set(rows.column_names):
        print(f"lightning-gpt: note: --test_split {args.test_split!r} lacks columns of {COLUMNS}; not copied.")
        return None
    return rows.select_columns(list(COLUMNS)).to_list()


def no_pairs_problem(args: argparse.Namespace, summary: dict, context: int, few_finished: str) -> str:
    """Why a run made no pair, and which flag to change (`few_finished`: the reason of prompts whose answers were
    cut)."""
    skipped, made = summary["skipped_prompts"], f"no pair made from the {summary['prompts']} prompts"
    if few_finished in skipped:
        # Prompts are at most half the context long, so only a larger budget than the other half can meet it.
        where = (
            f" (or at the models' context of {context} tokens)" if args.max_new_tokens > context - context // 2 else ""
        )
        return (
            f"{made}: {summary['unfinished_answers']} of {summary['prompts'] * args.num_candidates} answers were cut "
            f"at --max_new_tokens {args.max_new_tokens}{where} before they ended, and a cut answer never enters a "
            f"pair (skipped: {skipped}); raise --max_new_tokens."
        )
    return f"{made} ({skipped}); raise --num_candidates or --temperature."


def run(args: argparse.Namespace) -> dict:
    from tqdm import tqdm

    from lightning_gpt.commands.pair_sampling import FEW_FINISHED, load_models, make_shard, read_prompts
    from lightning_gpt.loading import resolve_device

    check_args(args)
    device = resolve_device(args.device)
    rows = load_split(args.data_path, args.split)
    models = load_models(args, device)
    where = f"--data_path {args.data_path} --split {args.split!r}"
    prompts, skipped_rows = read_prompts(rows, models.tokenizer, args.num_prompts, models.context // 2)
    if not prompts:
        reasons = dict(skipped_rows) or "it has no rows"
        raise UserInputError(f"{where}: no usable prompt ({reasons}); pass a split of chat conversations.")
    if len(prompts) < args.num_prompts:
        print(f"lightning-gpt: warning: {where} has {len(prompts)} usable prompts, fewer than --num_prompts "
              f"{args.num_prompts} (skipped: {dict(skipped_rows)}).", file=sys.stderr)  # fmt: skip
    out = Path(args.out)
    settings = run_settings(args, prompts)
    work = claim_out(out, settings)
    shards = [prompts[i : i + args.shard_size] for i in range(0, len(prompts), args.shard_size)]
    paths = [work / f"shard-{i:05d}.json" for i in range(len(shards))]
    done = [path.is_file() for path in paths]
    with tqdm(total=len(prompts), initial=sum(len(s) for s, d in zip(shards, done, strict=True) if d),
              desc="make-pairs", unit="prompt", disable=None) as progress:  # fmt: skip
        for shard, path, finished in zip(shards, paths, done, strict=True):
            if not finished:
                save_shard(path, make_shard(shard, models, args.num_candidates, args.batch_size, args.seed))
                progress.update(len(shard))
    results = [json.loads(path.read_text()) for path in paths]
    pairs = [row for result in results for row in result["rows"]]
    skipped = sum((Counter(result["skipped"]) for result in results), Counter())
    summary = {
        "out": str(out),
        "split": args.split,
        "prompts": len(prompts),
        "pairs": len(pairs),
        "skipped_prompts": dict(skipped),
        "unfinished_answers": sum(result["unfinished"] for result in results),
    }
    if not pairs:
        discard_work(out)  # nothing worth resuming: the advice below changes the flags
        raise UserInputError(no_pairs_problem(args, summary, models.context, FEW_FINISHED))
    splits = {args.split: pairs}
    test_rows = source_test_rows(args)
    if test_rows:
        splits[args.test_split] = test_rows
        summary["copied_split"] = args.test_split
    write_dataset(out, splits, settings)
    print(json.dumps(summary))
    return summary
