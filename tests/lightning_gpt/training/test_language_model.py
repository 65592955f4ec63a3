"""Training behaviour through the real Lightning Trainer, with a tiny model on a made-up corpus."""

import math

import pytest
import torch

from callbacks import TrainValGapEarlyStopping
from lightning_gpt.errors import UserInputError
from lightning_gpt.model import IGNORE_INDEX
from lightning_gpt.training.language_model import GPTModule
from tests.conftest import (
    LossRecorder,
    synthetic_articles,
    tiny_module,
    trainer,
    wikitext_data,
    wikitext_rows,
    write_hub_folder,
)


def test_loss_falls_during_fit(wikitext_dir, tmp_path):
    dm = wikitext_data(wikitext_dir)
    recorder = LossRecorder()
    trainer(tmp_path, 40, [recorder]).fit(tiny_module(dm), dm)
    first, last = sum(recorder.losses[:5]) / 5, sum(recorder.losses[-5:]) / 5
    assert last < first - 3.0, (first, last)


def test_checkpoint_rebuilds_the_model_alone(wikitext_dir, tmp_path):
    dm = wikitext_data(wikitext_dir)
    module = tiny_module(dm)
    fit = trainer(tmp_path, 2)
    fit.fit(module, dm)
    fit.save_checkpoint(tmp_path / "m.ckpt")
    loaded = GPTModule.load_from_checkpoint(tmp_path / "m.ckpt")
    assert loaded.config == module.config
    for (name, a), b in zip(module.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_checkpoint_of_another_shape_is_refused_clearly(wikitext_dir, tmp_path):
    dm = wikitext_data(wikitext_dir)
    fit = trainer(tmp_path, 1)
    fit.fit(tiny_module(dm), dm)
    fit.save_checkpoint(tmp_path / "m.ckpt")
    wider = tiny_module(dm, n_embd=64)
    with pytest.raises(UserInputError, match=r"another shape.*tok_emb.weight: checkpoint \(50304, 32\)"):
        trainer(tmp_path, 2).fit(wider, dm, ckpt_path=tmp_path / "m.ckpt")


def test_validation_metrics_are_token_means_over_the_whole_split(wikitext_dir, tmp_path):
    dm = wikitext_data(wikitext_dir, eval_batch_size=3)  # a short last batch and a padded last window
    module = tiny_module(dm)
    metrics = trainer(tmp_path, 1, limit_val_batches=None).validate(module, dm, verbose=False)[0]
    nll, hits, count = 0.0, 0, 0
    with torch.no_grad():
        for x, y in ((b.inputs, b.targets) for b in dm.val_dataloader()):
            logits = module.model.logits(x)
            scored = y != IGNORE_INDEX
            nll += torch.nn.functional.cross_entropy(logits[scored], y[scored], reduction="sum").item()
            hits += int((logits.argmax(-1)[scored] == y[scored]).sum())
            count += int(scored.sum())
    assert count == len(dm.tokens("val")) - 1  # every token of the split predicted once
    assert metrics["val_loss"] == pytest.approx(nll / count, rel=1e-5)
    assert metrics["val_ppl"] == pytest.approx(math.exp(nll / count), rel=1e-4)
    assert metrics["val_acc"] == pytest.approx(hits / count, abs=1e-6)


def gap_run(tmp_path, train_articles, val_articles, max_gap):
    folder = write_hub_folder(
        tmp_path / "data", {"train": wikitext_rows(train_articles), "validation": wikitext_rows(val_articles)}
    )
    dm = wikitext_data(folder)
    gap = TrainValGapEarlyStopping(max_gap=max_gap, patience=2)
    run = trainer(tmp_path, 150, [gap], limit_val_batches=None, val_check_interval=15, check_val_every_n_epoch=None)
    run.fit(tiny_module(dm, n_embd=64, learning_rate=2e-2), dm)
    return run, gap


def test_gap_callback_stops_a_run_that_overfits(tmp_path):
    # One short training article, memorised quickly; validation text shares no sentence with it.
    run, gap = gap_run(tmp_path, synthetic_articles(1, seed=1), synthetic_articles(6, seed=2)[3:], max_gap=0.5)
    assert run.global_step < 150
    assert gap.stopped_reason is not None and "overfitting" in gap.stopped_reason
    assert run.callback_metrics["train_val_gap"] > 0.5


def test_gap_callback_lets_a_healthy_run_go_on(tmp_path):
    # Validation on the training text itself: the gap stays near zero.
    articles = synthetic_articles(3, seed=1)
    run, gap = gap_run(tmp_path, articles, articles, max_gap=0.5)
    assert run.global_step == 150
    assert gap.stopped_reason is None
    assert abs(run.callback_metrics["train_val_gap"]) < 0.5


def test_the_gap_compares_eval_mode_losses_on_a_fixed_training_sample(wikitext_dir, tmp_path):
    dm = wikitext_data(wikitext_dir, eval_batch_size=4)
    gap = TrainValGapEarlyStopping(max_gap=10.0, patience=2)
    run = trainer(tmp_path, 8, [gap], limit_val_batches=3, val_check_interval=8, check_val_every_n_epoch=None)
    module = tiny_module(dm, dropout=0.5)  # a running training loss would be far above the eval-mode one
    run.fit(module, dm)
    val, sample = dm.val_dataloader()
    assert len(sample) == len(val)  # as many batches as validation; Lightning's limit_val_batches cuts both to 3
    assert run.num_val_batches == [3, 3]
    batches = list(sample)[:3]
    assert all(torch.equal(a.inputs, b.inputs) for a, b in zip(batches, list(dm.val_dataloader()[1])[:3], strict=True))
    module.eval()
    with torch.no_grad():
        sums = [module.model(b.inputs, b.targets) for b in batches]
    expected = float(sum(sums)) / sum(int((b.targets != IGNORE_INDEX).sum()) for b in batches)
    metrics = run.callback_metrics
    assert float(metrics["train_eval_loss"]) == pytest.approx(expected, rel=1e-5)
    assert float(metrics["train_val_gap"]) == pytest.approx(float(metrics["val_loss"] - metrics["train_eval_loss"]))
