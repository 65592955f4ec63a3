"""Cross-entropy of the language-model head without the whole logits tensor.

At gpt2-124m's training shape, a micro-batch of 16 x 1,024 tokens has 16,384 x 50,304 logits: 3.3 GB in float32,
and as much again for their gradient. Here the head's matmul, the softmax and both gradients run over chunks of
rows, so only one chunk's logits exist at a time. The gradients are computed in the forward pass (the loss is a
scalar, so the backward pass only scales them): the approach of Liger Kernel's fused linear cross-entropy, in plain
PyTorch. torch's own `F.cross_entropy` needs the logits whole, and no well-kept library in our dependencies does this.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Rows of logits per chunk: 2,048 x 50,304 float32 logits are 0.4 GB, enough rows to keep the matmuls efficient.
DEFAULT_CHUNK_ROWS = 2048


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index: int, chunk_rows: int, vocab_size: int, softcap):
        """hidden (N, C), weight (V, C), targets (N,). Returns the summed cross-entropy over targets that are not
        ignore_index, in float32, with the softmax over the first `vocab_size` rows of `weight` (the rest are
        padding: computed, for a matmul of a multiple of 64, then dropped), of logits capped to softcap *
        tanh(logits / softcap) when softcap is not None."""
        device = hidden.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        w = weight.to(dtype)[:vocab_size]  # (vocab, C): the real rows, so the logits come out contiguous
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_rows):
            h = hidden[start : start + chunk_rows].to(dtype)  # (n, C)
            t = targets[start : start + chunk_rows]  # (n,)
            logits = (h @ w.T).float()  # (n, vocab): the head's precision under autocast
            if softcap is not None:
                capped = torch.tanh(logits / softcap)  # (n, vocab)
                logits = capped * softcap
            scored = t != ignore_index  # (n,)
            safe = torch.where(scored, t, 0)
            lse = torch.logsumexp(logits, dim=-1)  # (n,)
            picked = logits.gather(1, safe[:, None]).squeeze(1)  # (n,)
            total += ((lse - picked) * scored).sum()
            # d(sum of losses)/d(logits) = softmax - one_hot(target), written over the logits (in place: the two
            # passes over the (n, vocab) block are this loss's whole cost beyond the matmuls).
            grad_logits = logits.sub_(lse[:, None]).exp_()  # (n, vocab)
            grad_logits.scatter_add_(1, safe[:, None], torch.full_like(lse, -1.0)[:, None])
            if softcap is not None:  # through the cap: d(c tanh(z / c))/dz = 1 - tanh(z / c)^2
                grad_logits *= 1.0 - capped.square()
                del capped
            grad_logits = grad_logits.to(dtype)
            # Rows whose target is ignored carry no gradient: masked on the (n, C) sides, not on the logits.
            keep = scored[:, None].to(dtype)  # (n, 1)
            grad_hidden[start : start + chunk_rows] = ((grad_logits @ w) * keep).to(hidden.dtype)
            grad_weight[:vocab_size] += (grad_logits.T @ (h * keep)).float()  # (vocab, C); padding rows get none
            del logits, grad_logits
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden, grad_weight = ctx.saved_tensors
        return (
            grad_hidden * grad_total.to(grad_hidden.dtype),
            grad_weight * grad_total.to(grad_weight.dtype),
            None,
            None,
            None,
            None,
            None,
        )


@torch.compiler.disable  # a Python loop over chunks; compiling the transformer around it is what pays
def chunked_cross_entropy_sum(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    vocab_size: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Sum over rows of cross_entropy(hidden @ weight[:vocab_size].T, targets), skipping targets equal to
    ignore_index.

    hidden (N, C) and targets (N,); weight (V, C) is the output projection, whose rows past `vocab_size` (default:
    all rows are real) are padding and take no part in the softmax; with `softcap`, the logits are softcap *
    tanh(logits / softcap). Equal (without softcap) to
    `F.cross_entropy((hidden @ weight.T).float()[:, :vocab_size], targets, ignore_index=ignore_index,
    reduction="sum")`, with the same gradients, but at most chunk_rows x V logits exist at once. Only for training
    (it computes gradients in the forward pass): without grad it falls back to the plain computation, chunked the
    same way.
    """
    vocab_size = weight.shape[0] if vocab_size is None else vocab_size
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _ChunkedLinearCrossEntropy.apply(hidden, weight, targets, ignore_index, chunk_rows, vocab_size, softcap)
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk_rows):
        logits = F.linear(hidden[start : start + chunk_rows], weight).float()[:, :vocab_size]
        if softcap is not None:
            logits = softcap * torch.tanh(logits / softcap)
        t = targets[start : start + chunk_rows]
        total += F.cross_entropy(logits, t, ignore_index=ignore_index, reduction="sum")
    return total
