"""The Bradley-Terry preference loss of a reward model, as a pure function (tested against a hand computation)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry(chosen: torch.Tensor, rejected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair loss and correctness of rewards under the Bradley-Terry model, P(chosen > rejected) =
    sigmoid(r_chosen - r_rejected).

    Args:
        chosen: (B,) rewards of the preferred answers.
        rejected: (B,) rewards of the other answers, pair i with chosen[i].

    Returns:
        losses (B,): -log sigmoid(r_chosen - r_rejected), in float32 whatever the rewards' dtype.
        correct (B,): 1.0 where r_chosen > r_rejected, else 0.0 (a tie is not a correct ranking).
    """
    margin = chosen.float() - rejected.float()  # (B,)
    return -F.logsigmoid(margin), (margin > 0).float()
