"""The chat rows of `lightning-gpt evaluate`'s card: ROUGE-L of greedy answers to held-out chats (as
`evaluate-chat` scores them), and with a reward model the mean reward of this model's answers to held-out prompts,
their win rate against another checkpoint's answers to the same prompts, and both answers' lengths (length alone
moves a reward model's score, so it is shown beside)."""

from __future__ import annotations

import argparse
import math
from dataclasses import replace

import torch

from lightning_gpt.chat import chat_stop_ids, render_answer
from lightning_gpt.commands.args import checked_settings
from lightning_gpt.errors import UserInputError
from lightning_gpt.evaluation.runner import Score
from lightning_gpt.generate import generate
from lightning_gpt.model import GPT
from lightning_gpt.tokenizer import AnyTokenizer, describe

SEED = 0  # which conversations are sampled (evaluate-chat's default)


def mean_and_stderr(values: list[float]) -> tuple[float, float | None]:
    """The mean and its standard error (sample standard deviation / sqrt(n), as the harness's mean_stderr)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(variance / len(values))


def row(task: str, metric: str, values: list[float], data: str, baseline: float | None = None) -> Score:
    mean, stderr = mean_and_stderr(values)
    return Score(task, metric, mean, stderr, baseline, len(values), data, chat_template=True)


def greedy_answers(model: GPT, tokenizer: AnyTokenizer, prompts: list[list[int]], args) -> list[list[int]]:
    """Each prompt's greedy answer (stop tokens left out), at most --max_new_tokens tokens."""
    settings = replace(
        checked_settings(max_new_tokens=args.max_new_tokens, temperature=0), stop_ids=chat_stop_ids(tokenizer)
    )
    return [
        o
        for start in range(0, len(prompts), args.batch_size)
        for o in generate(model, prompts[start : start + args.batch_size], settings)
    ]


def rouge_rows(model: GPT, tokenizer: AnyTokenizer, source: str, args: argparse.Namespace) -> list[Score]:
    """ROUGE-L F1 (torchmetrics, no stemming) of each of --chat_samples held-out chats' first answer."""
    from torchmetrics.functional.text import rouge_score

    from data_modules.hf_loading import load_hf_split
    from lightning_gpt.commands.evaluate_chat import opening_turns

    rows = load_hf_split(source, None, "test_sft", flag="--data_path")
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(SEED)).tolist()
    prompts, references, _ = opening_turns(tokenizer, (rows[i]["messages"] for i in order), args.chat_samples)
    if not prompts:
        raise UserInputError(f"--data_path {source} split 'test_sft' holds no usable conversation for chat_rouge.")
    answers = [tokenizer.decode(a) for a in greedy_answers(model, tokenizer, prompts, args)]
    scores = [
        float(rouge_score(a, r, rouge_keys="rougeL")["rougeL_fmeasure"])
        for a, r in zip(answers, references, strict=True)
    ]
    return [row("chat_rouge", "rougeL_f", scores, source)]


def _rewards(reward, tokenizer, prompts, answers: list[list[int]], context: int, batch_size: int) -> list[float]:
    """Each answer's reward, scored as make-pairs scores (the text encoded again, then <|end|>, cut to the context)."""
    from lightning_gpt.commands.pair_sampling import score

    rows = [
        (p.ids, render_answer(tokenizer, tokenizer.decode(a))[: context + 1 - len(p.ids)])
        for p, a in zip(prompts, answers, strict=True)
    ]
    return score(reward, rows, batch_size, tokenizer.eot_id)


def reward_rows(model: GPT, tokenizer: AnyTokenizer, source: str, args: argparse.Namespace) -> list[Score]:
    """The reward model's mean score of this model's greedy answers to --chat_samples held-out prompts, their
    lengths, and with --against the other checkpoint's, and the win rate (a tie counts a half)."""
    from data_modules.hf_loading import load_hf_split
    from lightning_gpt.commands.pair_sampling import read_prompts
    from lightning_gpt.loading import load_checkpoint, load_reward_model

    device = str(model.tok_emb.weight.device)
    reward, reward_tokenizer = load_reward_model(args.reward_ckpt, device)
    others = [(model, "--ckpt_path")]
    if args.against is not None:
        other, other_tokenizer = load_checkpoint(args.against, device)
        others.append((other, "--against"))
        if other_tokenizer.fingerprint != tokenizer.fingerprint:
            raise UserInputError(
                f"--against {args.against} was trained with {describe(other_tokenizer)}, the "
                f"checkpoint with {describe(tokenizer)}: pass a checkpoint of the same line."
            )
    if reward_tokenizer.fingerprint != tokenizer.fingerprint:
        raise UserInputError(
            f"--reward_ckpt {args.reward_ckpt} was trained with {describe(reward_tokenizer)}, the "
            f"checkpoint with {describe(tokenizer)}: it would score other tokens."
        )
    context = min(reward.config.block_size, *(m.config.block_size for m, _ in others))
    rows = load_hf_split(source, None, "test_prefs", flag="--data_path")
    prompts, _ = read_prompts(rows, tokenizer, args.chat_samples, context - args.max_new_tokens - 1)
    if not prompts:
        raise UserInputError(f"--data_path {source} split 'test_prefs' holds no prompt that fits for chat_reward.")
    answers = [greedy_answers(m, tokenizer, [p.ids for p in prompts], args) for m, _ in others]
    rewards = [_rewards(reward, tokenizer, prompts, a, context, args.batch_size) for a in answers]
    scores = [
        row("chat_reward", "reward", rewards[0], source),
        row("chat_reward", "answer_tokens", [float(len(a)) for a in answers[0]], source),
    ]
    if args.against is not None:
        wins = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(rewards[0], rewards[1], strict=True)]
        scores += [
            row("chat_reward", "win_rate", wins, source, baseline=0.5),
            row("chat_reward", "against_reward", rewards[1], source),
            row("chat_reward", "against_answer_tokens", [float(len(a)) for a in answers[1]], source),
        ]
    return scores
