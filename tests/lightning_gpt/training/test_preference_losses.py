"""The preference losses as pure functions (lightning_gpt/training/preference_losses.py), against hand computations."""

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_gpt.model import IGNORE_INDEX
from lightning_gpt.training.preference_losses import answer_logps, answer_positions, dpo_losses


def test_the_loss_and_rewards_match_a_hand_computation():
    pc, pr, rc, rr = (torch.tensor([v]) for v in (-3.0, -5.0, -4.0, -4.5))
    h = (-3.0 + 5.0) - (-4.0 + 4.5)  # 1.5
    terms = dpo_losses(pc, pr, rc, rr, beta=0.5)
    assert terms.losses.item() == pytest.approx(math.log(1 + math.exp(-0.5 * h)))
    assert terms.chosen_rewards.item() == pytest.approx(0.5) and terms.rejected_rewards.item() == pytest.approx(-0.25)
    smoothed = dpo_losses(pc, pr, rc, rr, beta=0.5, label_smoothing=0.1).losses.item()
    assert smoothed == pytest.approx(0.9 * math.log(1 + math.exp(-0.75)) + 0.1 * math.log(1 + math.exp(0.75)))
    assert dpo_losses(pc, pr, rc, rr, beta=0.5, loss_type="ipo").losses.item() == pytest.approx((h - 1.0) ** 2)


def test_answer_log_probabilities_are_sums_over_the_answer_tokens_alone():
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 11)
    targets = torch.full((3, 6), IGNORE_INDEX)
    targets[0, 2:5] = torch.tensor([1, 2, 3])
    targets[1, 0:6] = torch.arange(6)
    targets[2, 5] = 10
    select, answer_targets, rows = answer_positions(targets)
    sums, counts = answer_logps(logits[select], answer_targets, rows, 3)
    by_hand = [
        sum(F.log_softmax(logits[r, t], -1)[targets[r, t]] for t in range(6) if targets[r, t] != IGNORE_INDEX)
        for r in range(3)
    ]
    torch.testing.assert_close(sums, torch.stack(by_hand))
    assert counts.tolist() == [3, 6, 1]
