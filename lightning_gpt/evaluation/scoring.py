"""The log-likelihood of continuations under our model, as lm-evaluation-harness defines it (its HFLM): the context
and continuation ids are joined, cut on the left to the model's context plus one, and the continuation's tokens are
scored from the logits before them. Everything `evaluate` and the BLiMP callback report is built on this."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_gpt.model import GPT

Request = tuple[list[int], list[int]]  # (context ids, continuation ids); the context is never empty


def _window(request: Request, max_len: int) -> tuple[list[int], int]:
    """The model's input for one request and how many of its last positions predict the continuation."""
    context, continuation = request
    if not context or not continuation:
        raise ValueError("a request needs a non-empty context (lm-eval gives an empty one the prefix token)")
    if len(continuation) > max_len:
        raise ValueError(f"a continuation of {len(continuation)} tokens does not fit the context of {max_len}")
    return (context + continuation)[-(max_len + 1) :][:-1], len(continuation)


@torch.inference_mode()
def loglikelihoods(model: GPT, requests: list[Request], batch_size: int = 32) -> list[tuple[float, bool]]:
    """For each (context, continuation): the summed log-probability of the continuation's tokens and whether
    greedy decoding would produce exactly them (lm-eval's `is_greedy`).

    Requests are batched longest first (right-padded: with causal attention the padding after a row changes none
    of its logits) and only the continuation's positions go through the LM head.
    """
    device = model.tok_emb.weight.device
    max_len = model.config.block_size
    windows = [_window(r, max_len) for r in requests]
    order = sorted(range(len(requests)), key=lambda i: -len(windows[i][0]))
    results: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = len(windows[rows[0]][0])
        idx = torch.zeros(len(rows), width, dtype=torch.long)  # (B, T)
        select = torch.zeros(len(rows), width, dtype=torch.bool)  # (B, T): the positions that predict a target
        targets = []
        for b, i in enumerate(rows):
            ids, n = windows[i]
            idx[b, : len(ids)] = torch.tensor(ids)
            select[b, len(ids) - n : len(ids)] = True
            targets += requests[i][1]
        logits = model.logits(idx.to(device), select.to(device)).float()  # (n_all, vocab), row by row
        logprobs = F.log_softmax(logits, dim=-1)
        target = torch.tensor(targets, device=device)
        picked = logprobs.gather(1, target[:, None]).squeeze(1)  # (n_all,)
        greedy = logprobs.argmax(-1) == target  # (n_all,)
        counts = [windows[i][1] for i in rows]
        for i, lp, g in zip(rows, picked.split(counts), greedy.split(counts), strict=True):
            results[i] = (float(lp.sum()), bool(g.all()))
    return results


def choice_accuracy(lls: list[float], gold: int) -> float:
    """lm-eval's `acc` of one multiple-choice item: 1 when the gold choice has the highest log-likelihood (the
    first such choice on a tie, as numpy's argmax)."""
    return float(max(range(len(lls)), key=lambda i: (lls[i], -i)) == gold)
