"""UltraFeedback-binarized (HuggingFaceH4/ultrafeedback_binarized): preference pairs for DPO, one prompt with a
chosen and a rejected answer, rendered through the chat template.

One forward pass serves both answers of a pair: a batch of B pairs is 2B right-padded rows, the chosen sequences
first, then the rejected ones in the same pair order (`split_pair_batch`). Only the answer tokens and the <|end|>
that closes an answer are targets: DPO compares the log-probabilities of the two answers given the same prompt.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from data_modules.base import TokenDataModule
from data_modules.chat_messages import eval_batches, length_grouped_batches, sample_batches
from data_modules.holdout import held_out_rows, part_rows, row_keys, split_label
from data_modules.token_cache import token_dtype
from data_modules.tokenizer_setting import TokenizerSetting
from data_modules.windows import LazyArray, ResumableShuffleSampler
from lightning_gpt.batch import Batch
from lightning_gpt.chat import message_problem, render_answer, render_prompt
from lightning_gpt.errors import UserInputError
from lightning_gpt.model import IGNORE_INDEX

log = logging.getLogger(__name__)
_WHERE = re.compile(r"(?<=: )(message|turn) \d+ (\(\w+\) )?(has |is )?")
PAIR_LENGTHS = ("prompt_lengths", "chosen_lengths", "rejected_lengths")  # one entry per pair in each array
TIES = "ties"  # the skip reason of dropped ties, beside the malformed rows' reasons when nothing is left


def split_pair_batch(x: torch.Tensor, y: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """((x_chosen, y_chosen), (x_rejected, y_rejected)) of a batch of pairs: rows 0..B-1 are the chosen sequences,
    rows B..2B-1 the rejected ones, row B+i pairing with row i."""
    if x.shape[0] % 2 or y.shape[0] != x.shape[0]:
        raise ValueError(f"a batch of pairs has an even number of rows in x and y, not {x.shape[0]} and {y.shape[0]}")
    half = x.shape[0] // 2
    return (x[:half], y[:half]), (x[half:], y[half:])


def pair_problem(chosen, rejected) -> str | None:
    """Why a preference pair cannot be trained on, or None when it can: each side a well-formed conversation that
    ends with the assistant's answer, both with the same prompt (every turn before the answer) and different
    answers."""
    for side, messages in (("chosen", chosen), ("rejected", rejected)):
        problem = message_problem(messages)
        if problem:
            return f"{side}: {problem}"
        if messages[-1]["role"] != "assistant":
            return f"{side}: the last turn is not the assistant's answer"
    turns = [[(m["role"], m["content"]) for m in side] for side in (chosen, rejected)]
    if turns[0][:-1] != turns[1][:-1]:
        return "chosen and rejected have different prompts"
    if turns[0][-1] == turns[1][-1]:
        return "chosen and rejected are the same answer"
    return None


def is_tie(score_chosen, score_rejected) -> bool:
    return score_chosen is not None and score_chosen == score_rejected


def cut_prompt(prompt: list[int], max_tokens: int) -> list[int]:
    """At most `max_tokens` of a rendered prompt, cut from the left: the latest turns and the closing <|assistant|>
    are what the answers follow, and the leading <|endoftext|> (the boundary the model knows) always stays."""
    if len(prompt) <= max_tokens:
        return prompt
    return prompt[:1] + prompt[len(prompt) - max_tokens + 1 :]


class PairBatches(Dataset):
    """Item b is one whole batch of B pairs: x (2B, L) input ids and y (2B, L) targets, rows 0..B-1 the chosen
    sequences (prompt + chosen answer), rows B..2B-1 the rejected ones in the same pair order; L = longest
    sequence in the batch - 1. Right-padded with `pad_id`; targets are IGNORE_INDEX on the prompt and the padding.
    An (index, step_pairs) key from a counting sampler gives (x, y, step_pairs)."""

    def __init__(self, base: Path, meta: dict, batches: list[np.ndarray], pad_id: int) -> None:
        self.tokens = LazyArray(base, meta, "tokens")
        self.prompt, self.chosen, self.rejected = (
            np.array(LazyArray(base, meta, name).values, dtype=np.int64) for name in PAIR_LENGTHS
        )
        sizes = self.prompt + self.chosen + self.rejected
        self.offsets = np.cumsum(sizes) - sizes
        self.batches, self.pad_id = batches, pad_id

    def __len__(self) -> int:
        return len(self.batches)

    def fingerprint(self) -> str:
        """Identifies the pairs, in order: every token id and every part's length (a precomputed table of the
        reference's log-probabilities belongs to exactly these)."""
        digest = hashlib.sha256()
        for part in (self.prompt, self.chosen, self.rejected):
            digest.update(part.tobytes())
        digest.update(np.ascontiguousarray(self.tokens.values).tobytes())
        return digest.hexdigest()[:32]

    def pair(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Token ids of pair `index`: (prompt, chosen answer, rejected answer)."""
        start, p, c = int(self.offsets[index]), int(self.prompt[index]), int(self.chosen[index])
        end = start + p + c + int(self.rejected[index])
        ids = self.tokens.values[start:end].astype(np.int64)
        return ids[:p], ids[p : p + c], ids[p + c :]

    def __getitem__(self, key: int | tuple[int, int]) -> Batch:
        """A batch index, or (index, step_pairs) from a training sampler that counts pairs."""
        index, step_pairs = key if isinstance(key, tuple) else (key, None)
        pairs = self.batches[index]
        parts = [self.pair(int(pair)) for pair in pairs]
        x, y = answer_rows([(p, c) for p, c, _ in parts] + [(p, r) for p, _, r in parts], self.pad_id)
        real_tokens = sum(2 * len(p) + len(c) + len(r) - 2 for p, c, r in parts)  # each row's length - 1
        step_count = None if step_pairs is None else torch.tensor(step_pairs)
        return Batch(x, y, step_count, real_tokens, torch.from_numpy(np.asarray(pairs, dtype=np.int64)))


def answer_rows(prompts_and_answers: list[tuple], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x, y (N, L) of N (prompt ids, answer ids) sequences, right-padded with `pad_id`: x is each sequence but
    its last token, y the next token where that is an answer token, IGNORE_INDEX elsewhere. L is the longest
    sequence's length - 1. Preference batches, reward scoring and generated pairs share this layout."""
    width = max(len(prompt) + len(answer) for prompt, answer in prompts_and_answers) - 1
    x = torch.full((len(prompts_and_answers), width), pad_id, dtype=torch.long)
    y = torch.full((len(prompts_and_answers), width), IGNORE_INDEX, dtype=torch.long)
    for row, (prompt, answer) in enumerate(prompts_and_answers):
        sequence = torch.cat([torch.as_tensor(prompt, dtype=torch.long), torch.as_tensor(answer, dtype=torch.long)])
        x[row, : len(sequence) - 1] = sequence[:-1]
        y[row, len(prompt) - 1 : len(sequence) - 1] = sequence[len(prompt) :]  # each answer token from before it
    return x, y


def pair_lengths(base: Path, meta: dict) -> np.ndarray:
    """Each pair's longer sequence (prompt + the longer answer), what batches are grouped by."""
    prompt, chosen, rejected = (np.array(LazyArray(base, meta, n).values, dtype=np.int64) for n in PAIR_LENGTHS)
    return prompt + np.maximum(chosen, rejected)


class UltraFeedback(TokenDataModule):
    """UltraFeedback-binarized preference pairs for DPO: each row's prompt with its chosen and rejected answers.

    The prompt is the conversation before the last turn (a system turn allowed), rendered as for chat ending with
    <|assistant|>; each answer is its text then <|end|>. Sequences (prompt + answer) fit `block_size` + 1 tokens:
    the prompt is cut first, from the left, to `max_prompt_tokens` (its leading <|endoftext|> kept), then each
    answer from the right to what is left (a cut answer loses its <|end|>: it did not end there).

    Batches: `batch_size` and `eval_batch_size` count pairs. A batch of B pairs (lightning_gpt.batch.Batch) has
    inputs and targets of shape (2B, L): rows 0..B-1 the chosen sequences, rows B..2B-1 the rejected ones in the
    same pair order (`split_pair_batch` splits them), right-padded with <|endoftext|>; the target is the next token
    where that is an answer token or an answer's <|end|>, IGNORE_INDEX elsewhere. A training batch's step_count is
    the pairs of the whole optimizer step over all devices and accumulated batches (the loss divides by it).

    Args:
        path: Hugging Face dataset id, or a local folder in the hub's layout.
        name: the dataset's config name, if any.
        chosen_column: the column holding the preferred conversation, a list of {role, content}.
        rejected_column: the column holding the other one; every turn but the last equals the chosen one's.
        max_prompt_tokens: the most prompt tokens kept (default: half of `block_size`), at least 2.
        max_answer_tokens: the most tokens kept of each answer, its <|end|> included (default: whatever fits).
        drop_ties: skip pairs whose `score_chosen` equals `score_rejected`: neither answer is preferred.
        train_split: the split trained on.
        val_split: the split validated on. None (the default), or the train split itself: validate on
            `val_fraction` of the train split's pairs, held out from training.
        val_fraction: the share of the train split held out for validation when `val_split` is None or the train
            split, picked by a stable hash of `prompt_id` (as for UltraChat200k).
        test_split: the split tested on (`test` only; validation never reads it).
        tokenizer: the tokenizer, plus the chat tokens: gpt2, or the path of a checkpoint whose tokenizer to use.
            Unset: the one of --model.init_from (the CLI fills it in), else gpt2.
        **kwargs: see `TokenDataModule` (block_size, batch_size, eval_batch_size, num_workers, cache_dir, seed).
    """

    sample = "HuggingFaceH4/ultrafeedback_binarized"  # what --data.path sample reads (lightning_gpt/sample_data/)

    score_columns = ("score_chosen", "score_rejected")

    def __init__(
        self,
        path: str = "HuggingFaceH4/ultrafeedback_binarized",
        name: str | None = None,
        chosen_column: str = "chosen",
        rejected_column: str = "rejected",
        max_prompt_tokens: int | None = None,
        max_answer_tokens: int | None = None,
        drop_ties: bool = True,
        train_split: str = "train_prefs",
        val_split: str | None = None,
        val_fraction: float = 0.01,
        test_split: str = "test_prefs",
        tokenizer: str | None = None,
        **kwargs,
    ) -> None:
        self.chosen_column, self.rejected_column = chosen_column, rejected_column
        self.max_prompt_tokens, self.max_answer_tokens = max_prompt_tokens, max_answer_tokens
        self.drop_ties = drop_ties
        self.required_columns = (chosen_column, rejected_column, *(self.score_columns if drop_ties else ()))
        self.holds_out, self.val_fraction = val_split in (None, train_split), val_fraction
        super().__init__(
            path=path,
            name=name,
            train_split=train_split,
            val_split=val_split or train_split,
            test_split=test_split,
            tokenizer_setting=TokenizerSetting(tokenizer, chat=True),
            **kwargs,
        )

    @property
    def prompt_limit(self) -> int:
        return self.block_size // 2 if self.max_prompt_tokens is None else self.max_prompt_tokens

    def check_arguments(self) -> None:
        super().check_arguments()
        if not 2 <= self.prompt_limit <= self.block_size:
            flag = "--data.block_size" if self.max_prompt_tokens is None else "--data.max_prompt_tokens"
            raise UserInputError(
                f"{flag} gives prompts of at most {self.prompt_limit} tokens; a prompt keeps 2 to --data.block_size "
                f"{self.block_size} tokens (its <|endoftext|> and <|assistant|>, and room for one answer token)."
            )
        if self.max_answer_tokens is not None and self.max_answer_tokens < 1:
            raise UserInputError(
                f"--data.max_answer_tokens must be positive, not {self.max_answer_tokens} (leave it unset to keep "
                "whatever fits --data.block_size)."
            )

    def cache_variant(self, role: str | None = None) -> tuple[str, ...]:
        # What the cache holds depends on the length limits, the columns and the ties; which rows, on the holdout.
        variant = (
            f"max_tokens={self.block_size + 1}",
            f"max_prompt_tokens={self.prompt_limit}",
            f"max_answer_tokens={self.max_answer_tokens}",
            f"columns={self.chosen_column},{self.rejected_column}",
            f"drop_ties={self.drop_ties}",
        )
        return (*variant, *self.holdout_variant(role))

    def held_out_rows(self, rows) -> np.ndarray:
        """Which rows of the train split are validation rows (see `data_modules.holdout`); a row without prompt_id
        is keyed by its prompt turns, so that both answers to one prompt stay on one side."""

        def prompt_turns(messages):
            return messages[:-1] if isinstance(messages, list) else messages

        return held_out_rows(row_keys(rows, self.chosen_column, prompt_turns), self.val_fraction)

    def array_dtypes(self) -> dict[str, np.dtype]:
        """tokens: per pair, the prompt, then the chosen answer, then the rejected answer; the three lengths arrays
        (one entry per pair) say where each part ends."""
        lengths = dict.fromkeys(PAIR_LENGTHS, np.dtype(np.int32))
        return {"tokens": token_dtype(self.vocab_size), **lengths}

    def encode_pair(self, chosen: list[dict], rejected: list[dict]) -> tuple[list[int], list[list[int]], bool, int]:
        """(prompt ids, [chosen ids, rejected ids], whether the prompt was cut, how many answers were cut)."""
        full = render_prompt(self.tokenizer, chosen[:-1])
        prompt = cut_prompt(full, self.prompt_limit)
        room = self.block_size + 1 - len(prompt)  # >= 1: the prompt keeps at most block_size tokens
        limit = room if self.max_answer_tokens is None else min(room, self.max_answer_tokens)
        answers = [render_answer(self.tokenizer, side[-1]["content"]) for side in (chosen, rejected)]
        cut = sum(len(answer) > limit for answer in answers)
        return prompt, [answer[:limit] for answer in answers], len(prompt) < len(full), cut

    def encode_rows(self, rows, split: str) -> Iterator[dict[str, np.ndarray]]:
        stats = self.encode_stats
        stats.update(rows=0, pairs=0, skipped=0, skip_reasons={}, ties=0, prompts_cut=0, answers_cut=0)
        stats["ties_dropped"] = self.drop_ties
        part = self.holdout_part(self.encode_role)
        keep = None
        if part:
            keep, stats["holdout"] = part_rows(self.held_out_rows(rows), part, self.val_fraction)
        scored = all(column in rows.column_names for column in self.score_columns)
        columns = [self.chosen_column, self.rejected_column, *(self.score_columns if scored else ())]
        for batch in rows.select_columns(columns).iter(batch_size=512):
            tokens: list[int] = []
            lengths: dict[str, list[int]] = {name: [] for name in PAIR_LENGTHS}
            n = len(batch[self.chosen_column])
            scores = zip(*(batch[c] for c in self.score_columns), strict=True) if scored else [(None, None)] * n
            for chosen, rejected, (score_chosen, score_rejected) in zip(
                batch[self.chosen_column], batch[self.rejected_column], scores, strict=True
            ):
                stats["rows"] += 1
                if keep is not None and not keep[stats["rows"] - 1]:
                    continue  # the other part's row
                problem = pair_problem(chosen, rejected)
                if problem is None and is_tie(score_chosen, score_rejected):
                    stats["ties"] += 1
                    if self.drop_ties:
                        continue
                if problem is None:
                    prompt, answers, prompt_cut, answers_cut = self.encode_pair(chosen, rejected)
                    stats["prompts_cut"] += prompt_cut
                    stats["answers_cut"] += answers_cut
                    if answers[0] == answers[1]:  # no preference left to learn from
                        problem = "chosen and rejected are the same once cut to fit"
                if problem:
                    self._skip(problem, stats)
                    continue
                tokens += prompt + answers[0] + answers[1]
                for name, ids in zip(PAIR_LENGTHS, (prompt, *answers), strict=True):
                    lengths[name].append(len(ids))
            stats["pairs"] += len(lengths["prompt_lengths"])
            yield {"tokens": np.array(tokens, dtype=np.int64), **{n: np.array(v) for n, v in lengths.items()}}
        self._report(split, part)

    def _skip(self, problem: str, stats: dict) -> None:
        stats["skipped"] += 1
        reason = _WHERE.sub("", problem)  # "chosen: message 1 (assistant) has empty content" -> "chosen: empty content"
        stats["skip_reasons"][reason] = stats["skip_reasons"].get(reason, 0) + 1
        stats.setdefault("skip_example", f"row {stats['rows'] - 1}: {problem}")

    def _report(self, split: str, part: str | None) -> None:
        """One line of counts; a split with no usable pair fails, naming why."""
        stats = self.encode_stats
        used = stats["rows"] - stats.get("holdout", {}).get("excluded_rows", 0)
        ties = f"{stats['ties']} ties" + (" dropped" if self.drop_ties else " kept")
        cuts = f"{stats['prompts_cut']} prompts cut to {self.prompt_limit} tokens, {stats['answers_cut']} answers cut"
        skipped = (
            f"skipped {stats['skipped']} malformed rows {stats['skip_reasons']}"
            if stats["skipped"]
            else "no malformed rows"
        )
        example = f"; e.g. {stats['skip_example']}" if stats["skipped"] else ""
        noteworthy = (
            stats["skipped"] or stats["prompts_cut"] or stats["answers_cut"] or (stats["ties"] and self.drop_ties)
        )
        (log.warning if noteworthy else log.info)(
            "%s %s: %d pairs of %d rows; %s; %s; %s%s",
            *(self.path, split_label(split, part), stats["pairs"], used, ties, cuts, skipped, example),
        )
        if stats["pairs"]:
            return
        reasons = Counter(stats["skip_reasons"])
        if self.drop_ties:
            reasons[TIES] = stats["ties"]
        main, count = reasons.most_common(1)[0] if reasons else ("no rows", 0)
        why = f"{count} are ties (score_chosen == score_rejected)" if main == TIES else f"{count} {main!r}{example}"
        where = (
            f"the {used} rows held out for validation by --data.val_fraction {self.val_fraction}"
            if part == "val"
            else f"its {used} rows"
        )
        if main == TIES:
            hint = "set --data.drop_ties false to keep them"
        else:
            hint = (
                f"are --data.chosen_column {self.chosen_column!r} and --data.rejected_column {self.rejected_column!r} "
                "lists of {role, content} with the same prompt turns, each ending with the assistant's answer?"
            )
        if part == "val":
            hint += "; or raise --data.val_fraction or set --data.val_split to another split"
        raise UserInputError(
            f"--data.path {self.path} split {split!r}: no usable preference pair in {where}, mostly: {why}; {hint}."
        )

    # --- batches ---------------------------------------------------------------------------------------------

    def train_dataset(self, base: Path, meta: dict):
        lengths = pair_lengths(base, meta)
        batches = length_grouped_batches(lengths, self.batch_size, seed=self.seed)
        dataset = PairBatches(base, meta, batches, pad_id=self.tokenizer.eot_id)
        # The DPO loss is a mean over the pairs of an optimizer step: each batch counts its pairs.
        step_pairs = np.array([len(b) for b in batches], dtype=np.int64)
        sampler = ResumableShuffleSampler(dataset, item_targets=step_pairs, **self.sampler_args(1))
        return dataset, sampler, None

    def train_sample_dataset(self, base: Path, meta: dict, batches: int):
        # A random sample of all lengths: summed log-probabilities grow with length, so a sample of the longest pairs
        # (the first batches of length-sorted groups) would not compare with validation.
        sample = sample_batches(pair_lengths(base, meta), self.eval_batch_size, batches, seed=self.seed + 1)
        return PairBatches(base, meta, sample, pad_id=self.tokenizer.eot_id), None

    def eval_dataset(self, base: Path, meta: dict):
        batches = eval_batches(pair_lengths(base, meta), self.eval_batch_size)
        return PairBatches(base, meta, batches, pad_id=self.tokenizer.eot_id), None
