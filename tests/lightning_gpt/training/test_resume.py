"""Exact resumes: a run stopped and resumed from its checkpoint continues with the losses and learning rates of the
run that never stopped."""

import itertools

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_gpt.training.optim import warmup_cosine
from tests.conftest import (
    LossRecorder,
    StopAt,
    bpe_tokenizer_checkpoint,
    chat_data,
    conversation_texts,
    tiny_module,
    trainer,
    wikitext_data,
)


class LearningRates(L.Callback):
    def __init__(self):
        self.lrs = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs[trainer.global_step] = trainer.optimizers[0].param_groups[0]["lr"]


@pytest.mark.slow
def test_a_resume_with_more_steps_follows_the_longer_plan(wikitext_dir, tmp_path):
    planned = LearningRates()
    dm = wikitext_data(wikitext_dir, tokenizer="bpe-300")  # the schedule is tested: a small head will do
    trainer(tmp_path / "a", 24, [planned]).fit(tiny_module(dm, warmup_steps=3), dm)

    first, extended = LearningRates(), LearningRates()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=8)
    dm = wikitext_data(wikitext_dir, tokenizer="bpe-300")
    short = trainer(tmp_path / "b", 12, [first, StopAt(8), ckpt], enable_checkpointing=True)
    short.fit(tiny_module(dm, warmup_steps=3), dm)
    dm = wikitext_data(wikitext_dir, tokenizer="bpe-300")
    trainer(tmp_path / "b", 24, [extended]).fit(tiny_module(dm, warmup_steps=3), dm, ckpt_path=ckpt.last_model_path)

    assert sorted(extended.lrs) == list(range(8, 24))
    for step, lr in extended.lrs.items():
        assert lr == pytest.approx(planned.lrs[step], rel=1e-12), step
    after_warmup = [extended.lrs[s] for s in sorted(extended.lrs)]
    assert all(a >= b for a, b in itertools.pairwise(after_warmup))  # never rises again


class Recorder(L.Callback):
    def __init__(self):
        self.losses = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses[(trainer.current_epoch, batch_idx)] = float(outputs["loss"])


@pytest.mark.slow
def test_a_resume_from_an_end_of_epoch_validation_checkpoint_continues_exactly(wikitext_dir, tmp_path):
    # Lightning's default: validation (and ModelCheckpoint) at each epoch's end; dropout and accumulation on.
    def fit(root, ckpt_path=None):
        L.seed_everything(3)
        # A 300-token BPE: the seam is tested, not GPT-2's 50k-row head (which took 20 s here).
        dm = wikitext_data(wikitext_dir, batch_size=48, tokenizer="bpe-300")  # 6 optimizer steps an epoch
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


@pytest.mark.slow
def test_sft_resume_continues_exactly(ultrachat_dir, tmp_path):
    tokenizer = bpe_tokenizer_checkpoint(conversation_texts(ultrachat_dir), tmp_path / "bpe.ckpt")  # a small head

    def fresh():
        L.seed_everything(0)
        return chat_data(ultrachat_dir, tokenizer=tokenizer)

    straight = LossRecorder()
    dm = fresh()
    trainer(tmp_path / "a", 20, [straight]).fit(tiny_module(dm), dm)
    assert 10 < dm.trainer.num_training_batches < 20  # the run crosses an epoch boundary

    first, second = LossRecorder(), LossRecorder()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=7)
    dm = fresh()
    trainer(tmp_path / "b", 20, [first, StopAt(7), ckpt], enable_checkpointing=True).fit(tiny_module(dm), dm)
    dm = fresh()
    trainer(tmp_path / "b", 20, [second]).fit(tiny_module(dm), dm, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    torch.testing.assert_close(first.losses + second.losses, straight.losses, rtol=0, atol=1e-6)
