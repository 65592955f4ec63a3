"""Gradient accumulation weighs every scored token alike, and runs are refused where validation or the epoch's end
would split an optimizer step."""

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from data_modules.windows import ResumableShuffleSampler
from lightning_gpt.batch import Batch
from lightning_gpt.model import IGNORE_INDEX
from tests.conftest import chat_data, tiny_module, trainer, wikitext_data


class FirstStep(L.Callback):
    """Keeps the micro-batches and the gradients of the first optimizer step."""

    def __init__(self):
        self.batches, self.grads = [], None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 0:
            self.batches.append(batch)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self.grads is None:
            self.grads = {n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None}


def pad_together(batches):
    """One batch from several right-padded ones of different widths, as the data module would give it."""
    width = max(b.inputs.shape[1] for b in batches)
    xs = [torch.nn.functional.pad(b.inputs, (0, width - b.inputs.shape[1]), value=50256) for b in batches]
    ys = [torch.nn.functional.pad(b.targets, (0, width - b.targets.shape[1]), value=IGNORE_INDEX) for b in batches]
    return Batch(torch.cat(xs), torch.cat(ys), batches[0].step_count)


def test_four_micro_batches_give_the_gradients_of_one_batch_of_eight(ultrachat_dir, tmp_path):
    L.seed_everything(0)
    dm = chat_data(ultrachat_dir, batch_size=2)
    accumulated = FirstStep()
    run = trainer(tmp_path / "a", 1, [accumulated], accumulate_grad_batches=4)
    run.fit(tiny_module(dm, warmup_steps=0), dm)
    micro = accumulated.batches
    assert len(micro) == 4
    targets = [int((b.targets != IGNORE_INDEX).sum()) for b in micro]
    assert len(set(targets)) > 1  # the micro-batches really hold different numbers of assistant tokens
    assert all(int(b.step_count) == sum(targets) for b in micro)  # each knows its whole step's count

    L.seed_everything(0)
    whole = FirstStep()
    loader = DataLoader([pad_together(micro)], batch_size=None)
    trainer(tmp_path / "b", 1, [whole]).fit(tiny_module(dm, warmup_steps=0), train_dataloaders=loader)
    assert accumulated.grads.keys() == whole.grads.keys()
    for name, grad in whole.grads.items():
        torch.testing.assert_close(accumulated.grads[name], grad, rtol=0, atol=1e-6, msg=name)


def test_step_targets_sum_over_every_rank_and_micro_batch_of_the_step():
    targets = np.random.default_rng(0).integers(1, 100, size=50)
    world, per_step = 2, 3  # two ranks, each taking 3 items per optimizer step
    ranks = [
        list(ResumableShuffleSampler(range(50), 2, r, seed=1, items_per_step=per_step, item_targets=targets))
        for r in range(world)
    ]
    assert len(ranks[0]) == len(ranks[1]) == 50 // world // per_step * per_step  # whole steps only: 24
    for step in range(len(ranks[0]) // per_step):
        window = [pair for rank in ranks for pair in rank[step * per_step : (step + 1) * per_step]]
        assert {n for _, n in window} == {sum(int(targets[item]) for item, _ in window)}


def test_an_epoch_ends_on_a_whole_optimizer_step(wikitext_dir, tmp_path):
    dm = wikitext_data(wikitext_dir, batch_size=4)
    run = trainer(tmp_path, 1, accumulate_grad_batches=5)
    run.fit(tiny_module(dm), dm)
    assert run.num_training_batches % 5 == 0


def test_validation_inside_an_accumulation_window_is_refused(wikitext_dir, tmp_path):
    from lightning_gpt.errors import UserInputError

    dm = wikitext_data(wikitext_dir)
    run = trainer(tmp_path, 4, accumulate_grad_batches=4, val_check_interval=6, limit_val_batches=1)
    with pytest.raises(UserInputError, match="val_check_interval.*multiple of 4"):
        run.fit(tiny_module(dm), dm)


def test_limit_train_batches_that_splits_an_optimizer_step_is_refused(wikitext_dir, tmp_path):
    from lightning_gpt.errors import UserInputError

    dm = wikitext_data(wikitext_dir)
    run = trainer(tmp_path, 4, accumulate_grad_batches=4, limit_train_batches=6)
    with pytest.raises(UserInputError, match="limit_train_batches gives 6 .* multiple of 4"):
        run.fit(tiny_module(dm), dm)
