"""Continuous batching: many sequences decoded together, one token each per step, each joining and leaving at a step
boundary, so a short answer never waits behind a long one and a new request does not wait for the batch to drain.

Each sequence owns one row of a key/value cache of `max_rows` x `block_size` slots. It joins by a prefill of its
prompt alone (the computation `generate.stream` does for one prompt), whose keys and values are copied into its row;
then every step runs the model on the last token of every active row, each at its own position, attending to its own
filled slots only. Each sequence keeps its own sampling settings, random generator, stop ids and stop strings, so a
sequence's tokens are the ones it would get decoded alone. Active rows are kept at the front of the cache: a finished
row's place is taken by the last active one, so a step reads a contiguous view.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from lightning_gpt.generate import SamplingSettings, next_token
from lightning_gpt.model import GPT, LayerCache
from lightning_gpt.streamed_text import StreamedText


@dataclass
class Sequence:
    """One request being decoded: its prompt, its settings and what it has produced so far."""

    prompt: list[int]
    settings: SamplingSettings
    decode: Callable[[list[int]], str] | None = None
    tokens: list[int] = field(default_factory=list)
    budget: int = 0
    """The most tokens it may have: max_new_tokens, or what is left of the context after its prompt."""
    finish_reason: str | None = None
    """None while running; then "stop" (a stop id or string), "length" (max_new_tokens or the context's end) or
    "cancelled"."""

    def __post_init__(self) -> None:
        seed = self.settings.seed
        self.generator = None if seed is None else torch.Generator().manual_seed(seed)
        stops = self.settings.stop_strings
        self.text = StreamedText(self.decode, stops) if stops and self.decode is not None else None


class _RowCache:
    """One layer's keys and values for every row, written at each row's own position (the LayerCache interface:
    `append` stores the new slots and returns every filled one)."""

    def __init__(self, rows: int, n_head: int, slots: int, head_size: int, device, dtype) -> None:
        self.k = torch.zeros(rows, n_head, slots, head_size, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.positions: torch.Tensor | None = None  # (n,) where this step's token goes in each active row
        self.width = 0  # slots to read this step: the longest active row's, this token included

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v: (n, nh, 1, hs), the step's token of each of the first n rows. Returns (n, nh, width, hs)."""
        n = k.shape[0]
        rows = torch.arange(n, device=k.device)
        self.k[rows, :, self.positions] = k[:, :, 0]
        self.v[rows, :, self.positions] = v[:, :, 0]
        return self.k[:n, :, : self.width], self.v[:n, :, : self.width]


class ContinuousBatcher:
    """Decodes up to `max_rows` sequences together with `model` (in eval mode, under inference_mode).

    Args:
        model: the language model.
        max_rows: the most sequences decoded at once; more wait until a row is free.
    """

    def __init__(self, model: GPT, max_rows: int) -> None:
        self.model, self.max_rows = model, max_rows
        c, weight = model.config, model.tok_emb.weight
        self.caches = [
            _RowCache(max_rows, c.n_head, c.block_size, c.head_size, weight.device, weight.dtype) for _ in model.blocks
        ]
        self.active: list[Sequence] = []
        self.lengths: list[int] = []  # filled slots of each active row

    @property
    def free_rows(self) -> int:
        return self.max_rows - len(self.active)

    @torch.inference_mode()
    def add(self, sequence: Sequence) -> int | None:
        """Prefills `sequence`'s prompt into a free row and samples its first token; returns that token (None when
        the sequence ended at once: a stop id, or no room for any token)."""
        if not self.free_rows:
            raise RuntimeError("no free row: wait until a sequence ends")
        config = self.model.config
        prompt = sequence.prompt = sequence.prompt[-(config.block_size - 1) :]  # as stream() keeps it
        sequence.budget = min(sequence.settings.max_new_tokens, config.block_size - len(prompt))
        if sequence.budget <= 0:
            sequence.finish_reason = "length"
            return None
        weight = self.model.tok_emb.weight
        alone = [LayerCache(1, config.n_head, config.block_size, config.head_size, weight.device, weight.dtype)
                 for _ in self.model.blocks]  # fmt: skip
        ids = torch.tensor([prompt], device=weight.device)  # (1, P)
        positions = torch.arange(len(prompt), device=weight.device)[None]  # (1, P)
        mask = torch.ones(len(prompt), len(prompt), dtype=torch.bool, device=weight.device).tril()[None, None]
        logits = self.model.decode(ids, positions, alone, mask)  # (1, vocab)
        row = len(self.active)
        for cache, prefilled in zip(self.caches, alone, strict=True):
            cache.k[row, :, : len(prompt)] = prefilled.k[0, :, : len(prompt)]
            cache.v[row, :, : len(prompt)] = prefilled.v[0, :, : len(prompt)]
        self.active.append(sequence)
        self.lengths.append(len(prompt))
        token = self._take(sequence, logits)
        if sequence.finish_reason is not None:  # ended at its first token: it never takes a step
            self.active.pop()
            self.lengths.pop()
        return token

    @torch.inference_mode()
    def step(self) -> list[tuple[Sequence, int]]:
        """One token for every active sequence. Returns the (sequence, token) pairs produced; sequences that ended
        (a stop, their length limit) leave their rows."""
        if not self.active:
            return []
        n, device = len(self.active), self.model.tok_emb.weight.device
        last = torch.tensor([[s.tokens[-1]] for s in self.active], device=device)  # (n, 1)
        positions = torch.tensor(self.lengths, device=device)  # (n,): where each row's token goes
        width = max(self.lengths) + 1
        for cache in self.caches:
            cache.positions, cache.width = positions, width
        slots = torch.arange(width, device=device)
        mask = (slots[None, :] <= positions[:, None])[:, None, None, :]  # (n, 1, 1, width): each row's own slots
        logits = self.model.decode(last, positions[:, None], self.caches, mask)  # (n, vocab)
        for row in range(n):
            self.lengths[row] += 1
        # Greedy rows without a repetition penalty take their argmax together: one reduction over every row (cheaper
        # than gathering the greedy ones out of the logits) and one read back, instead of one of each per row.
        plain = [row for row, s in enumerate(self.active) if _plain_greedy(s.settings)]
        best = logits.argmax(dim=-1).tolist() if plain else []
        picked = {row: best[row] for row in plain}
        produced = []
        for row, sequence in enumerate(list(self.active)):
            token = self._take(sequence, logits[row : row + 1], picked.get(row))
            if token is not None:
                produced.append((sequence, token))
        self._compact()
        return produced

    def cancel(self, sequence: Sequence) -> None:
        """Ends `sequence` at the next step boundary (its client has gone)."""
        if sequence.finish_reason is None:
            sequence.finish_reason = "cancelled"

    def _take(self, sequence: Sequence, logits: torch.Tensor, token: int | None = None) -> int | None:
        """Samples `sequence`'s next token from its logits (1, vocab), unless `token` is given (its greedy pick);
        decides whether it ended."""
        if sequence.finish_reason is not None:  # cancelled meanwhile
            return None
        settings = sequence.settings
        if token is None:
            seen = None
            if settings.repetition_penalty != 1.0:  # the ids already there, as stream() gives them
                seen = torch.tensor([sequence.prompt + sequence.tokens], device=logits.device)
            token = int(next_token(logits, seen, settings, sequence.generator)[0])
        if token in settings.stop_ids:
            sequence.finish_reason = "stop"
            return None
        sequence.tokens.append(token)
        if sequence.text is not None:
            sequence.text.add(token)
            if sequence.text.stopped:
                sequence.finish_reason = "stop"
        if sequence.finish_reason is None and len(sequence.tokens) >= sequence.budget:
            sequence.finish_reason = "length"
        return token

    def _compact(self) -> None:
        """Moves the last active row into each ended row's place, so the active rows stay at the front."""
        row = 0
        while row < len(self.active):
            if self.active[row].finish_reason is None:
                row += 1
                continue
            last = len(self.active) - 1
            if row != last:
                for cache in self.caches:
                    cache.k[row] = cache.k[last]
                    cache.v[row] = cache.v[last]
                self.active[row], self.lengths[row] = self.active[last], self.lengths[last]
            self.active.pop()
            self.lengths.pop()


def _plain_greedy(settings: SamplingSettings) -> bool:
    """next_token's choice is the argmax of the logits alone."""
    return settings.temperature == 0 and settings.repetition_penalty == 1.0
