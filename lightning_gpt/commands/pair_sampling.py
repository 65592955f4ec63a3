"""The work of `lightning-gpt make-pairs` (lightning_gpt/commands/make_pairs.py): prompts read from a split, answers
sampled by the policy and scored by the reward model, and the pair each prompt gives."""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass, replace

import torch

from data_modules.holdout import holdout_hash, row_key
from data_modules.ultrafeedback import answer_rows
from lightning_gpt.chat import chat_stop_ids, is_chat, message_problem, render_answer, render_prompt
from lightning_gpt.commands.args import checked_settings
from lightning_gpt.errors import UserInputError
from lightning_gpt.generate import SamplingSettings, generate
from lightning_gpt.loading import load_checkpoint, load_reward_model
from lightning_gpt.model import GPT
from lightning_gpt.reward_head import RewardModel
from lightning_gpt.tokenizer import AnyTokenizer, describe

FEW_FINISHED = "fewer than 2 finished answers"  # the others were cut at the token budget


@dataclass
class Prompt:
    prompt_id: str
    turns: list[dict]  # the conversation before the answer, ending with a user turn
    ids: list[int]  # rendered for chat, ending with <|assistant|>


def prompt_turns(row: dict) -> list[dict] | None:
    """The turns before the answer: of the `chosen` (else `messages`) conversation, or the `prompt` text alone."""
    for column in ("chosen", "messages"):
        messages = row.get(column)
        if messages is not None and message_problem(messages) is None and messages[-1]["role"] == "assistant":
            return [{"role": m["role"], "content": m["content"]} for m in messages[:-1]]
    prompt = row.get("prompt")
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) and prompt.strip() else None


def read_prompts(rows, tokenizer: AnyTokenizer, limit: int, max_tokens: int) -> tuple[list[Prompt], Counter]:
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
def score(reward: RewardModel, rows: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int) -> list[float]:
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
    reward: RewardModel
    tokenizer: AnyTokenizer
    settings: SamplingSettings

    @property
    def context(self) -> int:
        """The longest sequence both models read."""
        return min(self.policy.config.block_size, self.reward.config.block_size)


def make_shard(prompts: list[Prompt], models: Models, n: int, batch_size: int, seed: int) -> dict:
    """Pairs of a shard's prompts: generation batches of whole prompts (n rows each), then scoring."""
    tokenizer = models.tokenizer
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
                scored.append((ids, render_answer(tokenizer, text)[: models.context + 1 - len(ids)]))
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


def load_models(args: argparse.Namespace, device: str) -> Models:
    policy, tokenizer = load_checkpoint(args.ckpt_path, device)
    if not is_chat(tokenizer):
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
