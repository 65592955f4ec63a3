"""The optimizer and its learning-rate schedule: AdamW's two groups, linear warmup, cosine decay to a floor."""

import itertools

import pytest
import torch

from lightning_gpt.training.optim import warmup_cosine


def test_the_schedule_is_a_closed_form_that_never_rises_after_warmup():
    lrs = [warmup_cosine(s, warmup_steps=4, total_steps=20, min_lr_ratio=0.1) for s in range(30)]
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert all(a >= b for a, b in itertools.pairwise(lrs[4:]))
    assert lrs[20:] == pytest.approx([0.1] * 10)  # flat at the floor past the planned end


def test_schedule_warms_up_linearly_then_decays_to_the_floor():
    from lightning_gpt.training.optim import adamw_warmup_cosine

    params = [torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(2))]
    optimizer, schedule = adamw_warmup_cosine(
        params,
        lr=1.0,
        weight_decay=0.1,
        betas=(0.9, 0.95),
        warmup_steps=4,
        total_steps=20,
        min_lr_ratio=0.1,
        fused=False,
    )
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]  # matrices decay, gains do not
    lrs = []
    for _ in range(20):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert all(a >= b for a, b in itertools.pairwise(lrs[4:]))
    assert lrs[-1] == pytest.approx(0.1, abs=0.02)
