"""A reward model for use outside the Trainer: the GPT plus a scalar head, read at each answer's last scored position.

Training is lightning_gpt/training/reward_model.py (whose state-dict keys, `model.*` and `score_head.*`, are this
module's, so a reward checkpoint loads here directly); `make-pairs` and the DPO samples callback score with this.
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_gpt.model import GPT, IGNORE_INDEX, GPTConfig

SCORE_HEAD = "score_head.weight"  # the state-dict key that tells a reward checkpoint from a language model's


def rewards(model: GPT, score_head: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x, y: (N, T) rows as `data_modules.ultrafeedback.answer_rows` collates them. Returns (N,) float32 rewards.

    The head reads the final hidden state at each row's last scored position (its last y != IGNORE_INDEX). There x
    holds the token before the answer's last one: causal attention has read the prompt and the whole answer but
    that last token (its <|end|> when the answer finished), and nothing after it, so the right padding never
    changes a reward. A row with no scored token reads position 0.
    """
    hidden = model.hidden_states(x)  # (N, T, C)
    T = y.shape[1]
    positions = torch.arange(T, device=y.device).expand_as(y)  # (N, T)
    last = torch.where(y != IGNORE_INDEX, positions, 0).amax(dim=1)  # (N,)
    states = hidden[torch.arange(y.shape[0], device=y.device), last]  # (N, C)
    return score_head(states).squeeze(-1).float()  # (N,)


class RewardModel(nn.Module):
    """The GPT and its score head: `rewards(x, y)` is one number per (prompt, answer) row."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.model = GPT(config)
        self.score_head = nn.Linear(config.n_embd, 1)

    def rewards(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return rewards(self.model, self.score_head, x, y)
