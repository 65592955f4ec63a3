"""DPO's arithmetic, apart from any model or trainer: answer log-probabilities, the sigmoid and IPO losses, and the
per-token entropy and KL that show how far the policy has moved. Names and conventions follow TRL's DPOTrainer."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lightning_gpt.model import IGNORE_INDEX

LOSS_TYPES = ("sigmoid", "ipo")


def answer_logps(
    logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor, n_rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (n, V) and targets (n,) of the answer tokens of n_rows sequences, `rows` (n,) saying whose each is.
    Returns each sequence's summed log-probability of its answer (n_rows,), in float32, and its token count."""
    token_logps = -F.cross_entropy(logits.float(), targets, reduction="none")  # (n,)
    sums = torch.zeros(n_rows, dtype=torch.float32, device=logits.device).index_add(0, rows, token_logps)
    return sums, torch.bincount(rows, minlength=n_rows)


def answer_positions(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """targets (N, T) with IGNORE_INDEX outside the answers -> (select (N, T) bool, the answer targets (n,), each
    one's row (n,)), in row-major order: the rows' tokens one row after the other."""
    select = targets != IGNORE_INDEX
    return select, targets[select], select.nonzero()[:, 0]


@dataclass
class PairTerms:
    """Per pair (B,): the loss and the implicit rewards beta * (log pi - log pi_ref) of each answer."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def dpo_losses(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> PairTerms:
    """Log-probabilities of the answers (B,) under the policy and the reference -> the loss of each pair.

    sigmoid (DPO, Rafailov et al. 2023): -log sigmoid(beta * h), h = (pc - pr) - (rc - rr); with label smoothing
    eps (conservative DPO) the preference is taken to be wrong with probability eps:
    -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h). ipo (Azar et al. 2023): (h - 1 / (2 beta))^2, on
    log-probabilities averaged over the answer's tokens (the caller passes those, as TRL does).
    """
    h = (policy_chosen - policy_rejected) - (reference_chosen - reference_rejected)  # (B,)
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, not {loss_type!r}")
    return PairTerms(
        losses=losses,
        chosen_rewards=beta * (policy_chosen - reference_chosen).detach(),
        rejected_rewards=beta * (policy_rejected - reference_rejected).detach(),
    )


def initial_loss(beta: float, loss_type: str) -> float:
    """The loss while the policy equals the reference (h = 0): ln 2 for sigmoid, whatever the smoothing."""
    return math.log(2) if loss_type == "sigmoid" else 1 / (4 * beta**2)


@torch.no_grad()
def entropy_and_kl(
    logits: torch.Tensor, reference_logits: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """logits (n, V) of n answer tokens. Returns the summed entropy of the policy's next-token distributions there,
    and the summed KL(policy || reference) to `reference_logits` (n, V) when given; exact sums over the
    vocabulary, in float32."""
    log_p = torch.log_softmax(logits.float(), dim=-1)  # (n, V)
    p = log_p.exp()
    entropy = -(p * log_p).sum()
    if reference_logits is None:
        return entropy, None
    log_q = torch.log_softmax(reference_logits.float(), dim=-1)  # (n, V)
    return entropy, (p * (log_p - log_q)).sum()
