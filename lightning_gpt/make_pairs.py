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
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from data_modules.holdout import holdout_hash, row_key
from data_modules.ultrafeedback import answer_rows
from lightning_gpt.chat import END_OF_TURN, message_problem, render_prompt
from lightning_gpt.commands import chat_stop_ids, checked_settings, load_checkpoint, resolve_device
from lightning_gpt.errors import UserInputError
from lightning_gpt.generate import SamplingSettings, generate
from lightning_gpt.model import GPT
from lightning_gpt.pair_folder import COLUMNS, FORMAT, claim_out, discard_work, file_digest, save_shard, write_dataset
from lightning_gpt.reward_model import RewardModule, load_reward_model
from lightning_gpt.tokenizer import Tokenizer, describe

FEW_FINISHED = "fewer than 2 finished answers"  # the others were cut at the token budget


@dataclass
class Prompt:
    prompt_id: str
    turns: list[dict]  # the conversation before the answer, ending with a user turn
    ids: list[int]  # rendered for chat, ending with <|assistant|>


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="lightning-gpt make-pairs",
        description="Sample --num_candidates answers per prompt with the policy, score them with the reward model, "
        "and write the best and the worst answer of each prompt as a preference pair (a dataset folder that "
        "--data.path of the DPO config reads). An answer cut at --max_new_tokens before it ended never enters a pair; "
        "prompts left with fewer than 2 finished answers, or whose answers are all the same or tie in score, give no "
        "pair. "
        "Re-running with the same flags resumes an interrupted run.",
    )
    parser.add_argument("--ckpt_path", required=True, help="the policy: a chat (SFT or DPO) checkpoint")
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
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    args = parser.parse_args(argv)
    check_args(args)
    return args


def check_args(args: argparse.Namespace) -> None:
    """Refuses values that cannot work before anything is loaded, naming the flag."""
    limits = {"num_prompts": 1, "num_candidates": 2, "batch_size": 1, "shard_size": 1, "max_new_tokens": 1}
    for flag, least in limits.items():
        if getattr(args, flag) < least:
            why = " (a pair needs a best and a worst answer)" if flag == "num_candidates" else ""
            raise UserInputError(f"--{flag} must be at least {least}, got {getattr(args, flag)}{why}.")
    if args.temperature <= 0:
        raise UserInputError(f"--temperature must be above 0, got {args.temperature}: greedy answers are all the same.")
    checked_settings(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p)


def load_split(path: str, split: str, flag: str = "--split"):
    """A split through data_modules.hf_loading, its errors naming this command's flags."""
    from data_modules.hf_loading import load_hf_split

    try:
        return load_hf_split(path, None, split, flag="--data_path")
    except UserInputError as err:
        message = str(err)
        raise UserInputError(f"{flag} {split!r}: {message}" if "Unknown split" in message else message) from None


def prompt_turns(row: dict) -> list[dict] | None:
    """The turns before the answer: of the `chosen` (else `messages`) conversation, or the `prompt` text alone."""
    for column in ("chosen", "messages"):
        messages = row.get(column)
        if messages is not None and message_problem(messages) is None and messages[-1]["role"] == "assistant":
            return [{"role": m["role"], "content": m["content"]} for m in messages[:-1]]
    prompt = row.get("prompt")
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) and prompt.strip() else None


def read_prompts(rows, tokenizer: Tokenizer, limit: int, max_tokens: int) -> tuple[list[Prompt], Counter]:
    """The first `limit` usable prompts of a split, one per prompt_id, each of at most `max_tokens` tokens; and
    why the other rows met on the way were skipped."""
    columns = [c for c in ("prompt", "prompt_id", "chosen", "messages") if c in rows.column_names]
    prompts, skipped, seen = [], Counter(), set()
    for batch in rows.select_columns(columns).iter(batch_size=256):
        for values in zip(*(batch[c] for c in columns), strict=True):
            row = dict(zip(columns, values, strict=True))
            turns = prompt_turns(row)
            if turns is None:
                skipped["no prompt (chosen, messages or prompt)"] += 1
                continue
            key = row_key(row.get("prompt_id"), turns)
            prompt_id = key if row.get("prompt_id") not in (None, "") else f"{holdout_hash(key):016x}"
            if prompt_id in seen:
                skipped["a prompt_id met before"] += 1
                continue
            ids = render_prompt(tokenizer, turns)
            if len(ids) > max_tokens:
                skipped[f"longer than {max_tokens} tokens"] += 1
                continue
            seen.add(prompt_id)
            prompts.append(Prompt(prompt_id, turns, ids))
            if len(prompts) == limit:
                return prompts, skipped
    return prompts, skipped


@torch.inference_mode()
def score(reward: RewardModule, rows: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int) -> list[float]:
    """The reward of each (prompt ids, answer ids) row, in batches of `batch_size`."""
    device = reward.score_head.weight.device
    scores: list[float] = []
    for start in range(0, len(rows), batch_size):
        x, y = answer_rows(rows[start : start + batch_size], pad_id)  # (n, L) each
        scores += reward.rewards(x.to(device), y.to(device)).tolist()
    return scores


def pick_pair(prompt: Prompt, answers: list[str], scores: list[float | None]) -> dict | str:
    """The pair row of a prompt's best and worst scored answers, or why there is none.

    Args:
        prompt: the prompt the answers reply to.
        answers: the prompt's sampled answers.
        scores: each answer's reward; None for one cut at the token budget before it ended, which never enters a
            pair (DPO would train <|end|> right after the cut text: the model would learn to stop mid-sentence).
    """
    finished = [(text, s) for text, s in zip(answers, scores, strict=True) if s is not None]
    if len(finished) < 2:
        return FEW_FINISHED
    candidates = [(text, s) for text, s in finished if text.strip()]
    if len(candidates) < 2:
        return "fewer than 2 non-empty answers"
    if len({text for text, _ in candidates}) == 1:
        return "all answers the same"
    best = max(candidates, key=lambda c: c[1])  # the first of equal scores: the same pick on every run
    worst = min(candidates, key=lambda c: c[1])
    if best[1] == worst[1]:
        return "best and worst scores tie"
    chosen = [*prompt.turns, {"role": "assistant", "content": best[0]}]
    return {
        "prompt": prompt.turns[-1]["content"],
        "prompt_id": prompt.prompt_id,
        "chosen": chosen,
        "rejected": [*prompt.turns, {"role": "assistant", "content": worst[0]}],
        "messages": chosen,
        "score_chosen": best[1],
        "score_rejected": worst[1],
    }


@dataclass
class Models:
    policy: GPT
    reward: RewardModule
    tokenizer: Tokenizer
    settings: SamplingSettings

    @property
    def context(self) -> int:
        """The longest sequence both models read."""
        return min(self.policy.config.block_size, self.reward.config.block_size)


def make_shard(prompts: list[Prompt], models: Models, n: int, batch_size: int, seed: int) -> dict:
    """Pairs of a shard's prompts: generation batches of whole prompts (n rows each), then scoring."""
    tokenizer, end = models.tokenizer, models.tokenizer.token_id(END_OF_TURN)
    per_batch = max(1, batch_size // n)
    rows, skipped, unfinished = [], Counter(), 0
    for start in range(0, len(prompts), per_batch):
        group = prompts[start : start + per_batch]
        longest = max(len(p.ids) for p in group)
        # Room for the answer and its <|end|> in the scored sequence; seeded by the batch's first prompt, so that
        # a resumed run samples what an uninterrupted one did.
        budget = min(models.settings.max_new_tokens, models.context - longest)
        settings = replace(models.settings, max_new_tokens=budget, seed=holdout_hash(f"{seed}:{group[0].prompt_id}"))
        outputs = generate(models.policy, [p.ids for p in group for _ in range(n)], settings)  # n rows per prompt
        # generate() leaves stop ids out, so an answer that ended has fewer tokens than the budget; one that used
        # it all was cut (even a stop drawn next would not have been sampled).
        finished = [len(tokens) < budget for tokens in outputs]
        unfinished += finished.count(False)
        answers = [tokenizer.decode(tokens) for tokens in outputs]
        # Scored as the pair will be trained on: the text encoded again, then <|end|>, cut to the context. Cut
        # answers are not scored: they never enter a pair.
        scored = []
        for i, text in enumerate(answers):
            ids = group[i // n].ids
            if finished[i]:
                scored.append((ids, [*tokenizer.encode(text), end][: models.context + 1 - len(ids)]))
        found = iter(score(models.reward, scored, batch_size, tokenizer.eot_id))
        scores = [next(found) if ok else None for ok in finished]
        for k, prompt in enumerate(group):
            pair = pick_pair(prompt, answers[k * n : (k + 1) * n], scores[k * n : (k + 1) * n])
            if isinstance(pair, str):
                skipped[pair] += 1
            else:
                rows.append(pair)
    return {
        "prompt_ids": [p.prompt_id for p in prompts],
        "rows": rows,
        "skipped": dict(skipped),
        "unfinished": unfinished,
    }


def run_settings(args: argparse.Namespace, prompts: list[Prompt]) -> dict:
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


def load_models(args: argparse.Namespace, device: str) -> Models:
    policy, tokenizer = load_checkpoint(args.ckpt_path, device)
    if END_OF_TURN not in tokenizer.special_tokens:
        raise UserInputError(f"--ckpt_path {args.ckpt_path} has no chat tokens; make-pairs needs a chat model.")
    reward, reward_tokenizer = load_reward_model(args.reward_ckpt, device)
    if reward_tokenizer.fingerprint != tokenizer.fingerprint:
        raise UserInputError(
            f"--reward_ckpt {args.reward_ckpt} was trained with {describe(reward_tokenizer)}, --ckpt_path "
            f"{args.ckpt_path} with {describe(tokenizer)}: the reward model would score other tokens than the policy "
            "wrote. Train the reward model from the same SFT checkpoint's line (same tokenizer)."
        )
    settings = checked_settings(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p)
    return Models(policy, reward, tokenizer, replace(settings, stop_ids=chat_stop_ids(tokenizer)))


def no_pairs_problem(args: argparse.Namespace, summary: dict, context: int) -> str:
    """Why a run made no pair, and which flag to change."""
    skipped, made = summary["skipped_prompts"], f"no pair made from the {summary['prompts']} prompts"
    if FEW_FINISHED in skipped:
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


def make_pairs_command(argv: list[str]) -> dict:
    from tqdm import tqdm

    args = parse_args(argv)
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
        raise UserInputError(no_pairs_problem(args, summary, models.context))
    splits = {args.split: pairs}
    test_rows = source_test_rows(args)
    if test_rows:
        splits[args.test_split] = test_rows
        summary["copied_split"] = args.test_split
    write_dataset(out, splits, settings)
    print(json.dumps(summary))
    return summary
