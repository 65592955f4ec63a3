"""Text generation in plain PyTorch: a KV cache, batched prompts of different lengths, sampling, stops, streaming.

Prompts are left-padded into one (B, P) block so that every row's next token lands in the same cache slot; each
row's rotary positions start at 0 at its first real token, and the attention mask hides the padding.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from lightning_gpt.model import GPT
from lightning_gpt.streamed_text import StreamedText


@dataclass
class SamplingSettings:
    max_new_tokens: int = 128
    temperature: float = 0.8
    """0 picks the most likely token (greedy)."""
    top_k: int | None = None
    """Sample only among the k most likely tokens."""
    top_p: float | None = None
    """Sample only among the most likely tokens whose probabilities add up to p (nucleus sampling)."""
    repetition_penalty: float = 1.0
    """> 1 makes tokens already in the prompt or output less likely (CTRL's penalty)."""
    seed: int | None = None
    stop_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        problem = self.problem()
        if problem is not None:
            raise ValueError(problem)

    def problem(self) -> str | None:
        """What is wrong with these settings, or None. The message starts with the field's name, which is also
        the name of the CLI flag that sets it."""
        checks = (
            ("max_new_tokens", self.max_new_tokens >= 0, ">= 0"),
            ("temperature", math.isfinite(self.temperature) and self.temperature >= 0, "a finite number >= 0"),
            ("top_k", self.top_k is None or self.top_k > 0, "a positive integer"),
            ("top_p", self.top_p is None or 0 < self.top_p <= 1, "in (0, 1]"),  # NaN fails the comparison
            ("seed", self.seed is None or -(2**63) <= self.seed < 2**64, "an integer in [-2**63, 2**64)"),
            (
                "repetition_penalty",
                math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0,
                "a finite number > 0",
            ),
        )
        for name, ok, requirement in checks:
            if not ok:
                return f"{name} must be {requirement}, got {getattr(self, name)}"
        return None


def penalise_repeats(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty: the logit of every token id in a row's `seen` is divided by `penalty` when
    positive and multiplied by it otherwise.

    Args:
        logits: (B, V) float logits.
        seen: (B, S) token ids already in each row; -1 (padding) and ids outside the logits count for nothing.
        penalty: > 0; 1 changes nothing.

    Returns:
        The penalised (B, V) logits.
    """
    B, V = logits.shape
    # Scatter the same value everywhere, so duplicate ids cannot race (on CUDA) or overwrite each other; padding
    # goes to an extra column 0 that is dropped, so it never touches token 0.
    column = torch.where((seen >= 0) & (seen < V), seen + 1, 0)
    hit = torch.zeros(B, V + 1, dtype=torch.bool, device=logits.device).scatter_(1, column, True)[:, 1:]
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(hit, penalised, logits)


def next_token(
    logits: torch.Tensor, seen: torch.Tensor, settings: SamplingSettings, generator: torch.Generator | None
) -> torch.Tensor:
    """logits (B, V) over real token ids, seen (B, S) ids already in each row (-1 for none). Returns (B,) ids."""
    logits = logits.float()
    if settings.repetition_penalty != 1.0:
        logits = penalise_repeats(logits, seen, settings.repetition_penalty)
    if settings.temperature == 0:
        return logits.argmax(dim=-1)
    # In float64, shifted so that the best logit is 0: any temperature > 0, however small, then gives finite
    # logits or -inf, never NaN (in float32 a temperature below 1e-38 is 0, and 0 / 0 is NaN).
    logits = (logits.double() - logits.max(dim=-1, keepdim=True).values.double()) / settings.temperature
    if settings.top_k is not None:
        kth = torch.topk(logits, min(settings.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if settings.top_p is not None and settings.top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative - sorted_logits.softmax(dim=-1) >= settings.top_p  # keeps the token that crosses p
        drop[:, 0] = False  # and always the most likely one (a top_p below float32's range would drop it too)
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(1)


def _attention_mask(valid: torch.Tensor, start: int, length: int) -> torch.Tensor:
    """valid (B, S) real-token slots; queries sit at slots start..start+length-1. Returns (B, 1, length, S).

    A padding slot sees only itself: a query with nothing to attend to would give NaN, and NaN values stay NaN
    even under zero attention weight, so they would leak into the real tokens' outputs.
    """
    S = valid.shape[1]
    keys = torch.arange(S, device=valid.device)[None, :]  # (1, S)
    queries = torch.arange(start, start + length, device=valid.device)[:, None]  # (length, 1)
    allowed = ((keys <= queries)[None] & valid[:, None, :]) | (keys == queries)[None]  # (B, length, S)
    return allowed.unsqueeze(1)


@torch.inference_mode()
def stream(
    model: GPT,
    prompts: list[list[int]],
    settings: SamplingSettings,
    decode: Callable[[list[int]], str] | None = None,
    use_cache: bool = True,
) -> Iterator[list[tuple[int, int]]]:
    """Yields, at each step, the (row, token id) pairs just generated for rows still running.

    A row stops at max_new_tokens, at a stop id (not yielded), at a stop string (needs `decode`; the tokens that
    complete it are yielded, callers trim the text), or when the context is full.
    """
    config = model.config
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    limit = config.block_size - 1
    if any(len(p) > limit for p in prompts):
        warnings.warn(
            f"a prompt is longer than the context ({config.block_size} tokens): keeping its last {limit}", stacklevel=2
        )
        prompts = [p[-limit:] for p in prompts]
    device = model.tok_emb.weight.device
    B, P = len(prompts), max(len(p) for p in prompts)
    # Each row's own budget: its positions start at 0 at its first real token, so a short prompt batched with a
    # long one may still fill the whole context (the same answer as alone, whatever the batch).
    budgets = [min(settings.max_new_tokens, config.block_size - len(p)) for p in prompts]
    if min(budgets) < settings.max_new_tokens:
        warnings.warn(
            f"prompt + max_new_tokens exceeds the context of {config.block_size} tokens: generation stops "
            f"after {min(budgets)} new tokens for the longest prompt",
            stacklevel=2,
        )
    total = P + max(budgets)  # slots; a row's positions stay below block_size
    pad = torch.tensor([P - len(p) for p in prompts], device=device)  # (B,)
    seq = torch.zeros(B, total, dtype=torch.long, device=device)  # left-padded prompts, then the output
    for row, prompt in enumerate(prompts):
        seq[row, P - len(prompt) : P] = torch.tensor(prompt, device=device)
    slots = torch.arange(total, device=device)
    valid = slots[None, :] >= pad[:, None]  # (B, total)
    # (B, total); a finished row's later slots are clamped into the table (their tokens are never used).
    positions = (slots[None, :] - pad[:, None]).clamp(0, config.block_size - 1)
    generator = None
    if settings.seed is not None:
        generator = torch.Generator(device=device).manual_seed(settings.seed)
    caches = model.new_caches(B, total) if use_cache else None
    running = [True] * B  # on the host: deciding a row's stop needs no device access
    # Each row's text, to find its stop strings as tokens arrive (in time linear in the text).
    texts = [StreamedText(decode, settings.stop_strings) for _ in range(B)] if settings.stop_strings and decode else []
    stop_ids = set(settings.stop_ids)
    filled = P  # slots of `seq` known so far
    while filled < total and any(running):
        if use_cache:  # only the slots the cache has not seen yet, attending to every slot so far
            start = caches[0].length
            mask = _attention_mask(valid[:, :filled], start, filled - start)
        else:  # every slot again, at most a context's worth: a running row's tokens all lie in the last block_size
            start = max(0, filled - config.block_size)
            mask = _attention_mask(valid[:, start:filled], 0, filled - start)
        # decode, not __call__: the training loss compiled in place is no part of it, so no recompiling per length.
        logits = model.decode(seq[:, start:filled], positions[:, start:filled], caches, mask)  # (B, vocab)
        seen = torch.where(valid[:, :filled], seq[:, :filled], -1)
        token = next_token(logits, seen, settings, generator)  # (B,)
        seq[:, filled] = token
        filled += 1
        out = []
        # The one device-to-host copy of the step (not one per row): what each row stops on is decided on the host.
        for row, token_id in enumerate(token.tolist()):
            if not running[row]:
                continue
            if token_id in stop_ids:
                running[row] = False
                continue
            out.append((row, token_id))
            if budgets[row] <= filled - P:  # this token is the row's last
                running[row] = False
            elif texts:
                texts[row].add(token_id)
                running[row] = not texts[row].stopped
        if out:
            yield out


def generate(
    model: GPT,
    prompts: list[list[int]],
    settings: SamplingSettings,
    decode: Callable[[list[int]], str] | None = None,
    use_cache: bool = True,
) -> list[list[int]]:
    """The new tokens of each prompt (stop ids excluded)."""
    outputs: list[list[int]] = [[] for _ in prompts]
    for pairs in stream(model, prompts, settings, decode, use_cache):
        for row, token in pairs:
            outputs[row].append(token)
    return outputs
