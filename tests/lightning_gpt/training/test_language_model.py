"""The language model (lightning_gpt/training/language_model.py) through the real Lightning Trainer, with a tiny model
on a made-up corpus: the loss falls, checkpoints rebuild it, and its metrics are what they say."""

import math

import pytest
import torch

from data_modules import WikiText103
from lightning_gpt.errors import UserInputError
from lightning_gpt.model import IGNORE_INDEX
from lightning_gpt.training.language_model import GPTModule
from tests.conftest import (
    LossRecorder,
    tiny_module,
    trainer,
    wikitext_data,
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


def test_a_fractional_val_limit_scores_as_many_training_batches_as_validation(wikitext_dir, tmp_path):
    dm = wikitext_data(wikitext_dir, eval_batch_size=2)
    run = trainer(tmp_path, 2, limit_val_batches=0.25, val_check_interval=2, check_val_every_n_epoch=None)
    run.fit(tiny_module(dm), dm)
    assert len(run.num_val_batches) == 2 and run.num_val_batches[0] == run.num_val_batches[1] >= 1


def test_test_reports_word_perplexity_and_bits_per_byte(wikitext_dir, tmp_path):
    dm = WikiText103(path=str(wikitext_dir), block_size=32, batch_size=4, num_workers=0)
    metrics = trainer(tmp_path, 1).test(tiny_module(dm), dm, verbose=False)[0]
    stats = dm.text_stats("test")
    total_nll = metrics["test_loss"] * stats["targets"]
    assert metrics["test_word_ppl"] == pytest.approx(torch.tensor(total_nll / stats["words"]).exp().item(), rel=1e-4)
    assert metrics["test_bpb"] == pytest.approx(total_nll / (0.6931471805599453 * stats["bytes"]), rel=1e-4)
