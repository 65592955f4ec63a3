"""Gradient accumulation weighs every scored token alike, and the learning-rate schedule survives a longer resume."""

import itertools

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from data_modules.windows import ResumableShuffleSampler
from lightning_gpt.batch import Batch
from lightning_gpt.model import IGNORE_INDEX
from lightning_gpt.training.optim import warmup_cosine
from tests.conftest import StopAt, chat_data, tiny_module, trainer, wikitext_data


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


class LearningRates(L.Callback):
    def __init__(self):
        self.lrs = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs[trainer.global_step] = trainer.optimizers[0].param_groups[0]["lr"]


def test_a_resume_with_more_steps_follows_the_longer_plan(wikitext_dir, tmp_path):
    planned = LearningRates()
    dm = wikitext_data(wikitext_dir)
    trainer(tmp_path / "a", 24, [planned]).fit(tiny_module(dm, warmup_steps=3), dm)

    first, extended = LearningRates(), LearningRates()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=8)
    dm = wikitext_data(wikitext_dir)
    short = trainer(tmp_path / "b", 12, [first, StopAt(8), ckpt], enable_checkpointing=True)
    short.fit(tiny_module(dm, warmup_steps=3), dm)
    dm = wikitext_data(wikitext_dir)
    trainer(tmp_path / "b", 24, [extended]).fit(tiny_module(dm, warmup_steps=3), dm, ckpt_path=ckpt.last_model_path)

    assert sorted(extended.lrs) == list(range(8, 24))
    for step, lr in extended.lrs.items():
        assert lr == pytest.approx(planned.lrs[step], rel=1e-12), step
    after_warmup = [extended.lrs[s] for s in sorted(extended.lrs)]
    assert all(a >= b for a, b in itertools.pairwise(after_warmup))  # never rises again


def test_the_schedule_is_a_closed_form_that_never_rises_after_warmup():
    lrs = [warmup_cosine(s, warmup_steps=4, total_steps=20, min_lr_ratio=0.1) for s in range(30)]
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert all(a >= b for a, b in itertools.pairwise(lrs[4:]))
    assert lrs[20:] == pytest.approx([0.1] * 10)  # flat at the floor past the planned end


class Recorder(L.Callback):
    def __init__(self):
        self.losses = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses[(trainer.current_epoch, batch_idx)] = float(outputs["loss"])


def test_a_resume_from_an_end_of_epoch_validation_checkpoint_continues_exactly(wikitext_dir, tmp_path):
    # Lightning's default: validation (and ModelCheckpoint) at each epoch's end; dropout and accumulation on.
    def fit(root, ckpt_path=None):
        L.seed_everything(3)
        dm = wikitext_data(wikitext_dir, batch_size=32)  # 5 optimizer steps an epoch
        recorder = Recorder()
        saves = ModelCheckpoint(dirpath=root, save_top_k=-1, filename="{epoch}-{step}", monitor="val_loss")
        run = trainer(root, 12, [recorder, saves], accumulate_grad_batches=2, limit_val_batches=2,
                      enable_checkpointing=True)  # fmt: skip
        run.fit(tiny_module(dm, dropout=0.1), dm, ckpt_path=ckpt_path)
        return recorder.losses, run

    straight, run = fit(tmp_path / "a")
    assert run.current_epoch >= 2
    end_of_first_epoch = sorted((tmp_path / "a").glob("epoch=0-*.ckpt"))[0]
    resumed, _ = fit(tmp_path / "b", end_of_first_epoch)
    assert resumed and all(resumed[key] == straight[key] for key in resumed)


def test_a_fractional_val_limit_scores_as_many_training_batches_as_validation(wikitext_dir, tmp_path):
    dm = wikitext_data(wikitext_dir, eval_batch_size=2)
    run = trainer(tmp_path, 2, limit_val_batches=0.25, val_check_interval=2, check_val_every_n_epoch=None)
    run.fit(tiny_module(dm), dm)
    assert len(run.num_val_batches) == 2 and run.num_val_batches[0] == run.num_val_batches[1] >= 1


def test_limit_train_batches_that_splits_an_optimizer_step_is_refused(wikitext_dir, tmp_path):
    from lightning_gpt.errors import UserInputError

    dm = wikitext_data(wikitext_dir)
    run = trainer(tmp_path, 4, accumulate_grad_batches=4, limit_train_batches=6)
    with pytest.raises(UserInputError, match="limit_train_batches gives 6 .* multiple of 4"):
        run.fit(tiny_module(dm), dm)


def test_a_checkpoint_with_the_old_sequential_schedule_resumes_on_the_closed_form(wikitext_dir, tmp_path):
    from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

    dm = wikitext_data(wikitext_dir)
    run = trainer(tmp_path / "a", 6)
    module = tiny_module(dm, warmup_steps=3)
    run.fit(module, dm)
    run.save_checkpoint(tmp_path / "new.ckpt")
    checkpoint = torch.load(tmp_path / "new.ckpt", weights_only=True)
    optimizer = torch.optim.AdamW([{"params": [torch.nn.Parameter(torch.zeros(1))]} for _ in range(2)])
    old = SequentialLR(optimizer, [LinearLR(optimizer, 0.25, total_iters=3), CosineAnnealingLR(optimizer, 3)], [3])
    for _ in range(6):
        optimizer.step()
        old.step()
    checkpoint["lr_schedulers"] = [old.state_dict()]  # what lightning-gpt wrote before the closed form
    torch.save(checkpoint, tmp_path / "old.ckpt")
    lrs = LearningRates()
    trainer(tmp_path / "b", 12, [lrs]).fit(tiny_module(dm, warmup_steps=3), dm, ckpt_path=tmp_path / "old.ckpt")
    for step, lr in lrs.lrs.items():
        expected = 1e-2 * warmup_cosine(step, warmup_steps=3, total_steps=12, min_lr_ratio=0.1)
        assert lr == pytest.approx(expected, rel=1e-12), step
