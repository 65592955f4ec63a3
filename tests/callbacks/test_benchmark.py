"""callbacks.BlimpAccuracy: BLiMP scored at each validation during training, equal to the harness's score of the same
model on the same pairs; found in the local mirror the training data comes from; its absence handled."""

from __future__ import annotations

import logging

import lightning as L
import pytest
import torch

from tests.conftest import benchmark_mirror, wikitext_folder


def fit(tmp_path, data_path, *callbacks, steps: int = 4):
    from data_modules import WikiText103
    from lightning_gpt.training import GPTModule

    dm = WikiText103(path=str(data_path), block_size=16, batch_size=4, num_workers=0, seed=7)
    module = GPTModule(preset="tiny", vocab_size=50257, block_size=16, n_layer=1, n_embd=32, learning_rate=1e-2,
                       warmup_steps=1)  # fmt: skip
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, val_check_interval=2, limit_val_batches=1,
                        logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        num_sanity_val_steps=1, default_root_dir=tmp_path, callbacks=list(callbacks))  # fmt: skip
    trainer.fit(module, dm)
    return trainer, module, dm


def test_blimp_is_logged_at_each_validation_as_the_harness_scores_it(tmp_path):
    """The run reads WikiText from ROOT/Salesforce/wikitext, so the callback's hub id is found at ROOT/nyu-mll/blimp;
    after training, its last score is the harness's group score of the same model on the same pairs."""
    lm_eval = pytest.importorskip("lm_eval")
    from callbacks import BlimpAccuracy
    from lightning_gpt.evaluation.harness import GPTHarnessLM
    from lightning_gpt.evaluation.runner import task_manager, task_spec
    from lightning_gpt.evaluation.tasks import TASKS

    root = benchmark_mirror(tmp_path / "hub")
    wikitext = wikitext_folder(root / "Salesforce" / "wikitext")
    callback = BlimpAccuracy(limit=4, batch_size=3)  # data_path: the hub id nyu-mll/blimp
    logged = []

    class Spy(L.Callback):  # what was logged at each validation (the sanity check's included, if any)
        def on_validation_end(self, trainer, pl_module):
            logged.append((trainer.global_step, trainer.callback_metrics.get("val_blimp_acc")))

    trainer, module, dm = fit(tmp_path, wikitext, callback, Spy())
    assert [step for step, acc in logged if acc is not None] == [2, 4]  # not in the sanity check
    assert callback.encoded.names == ["causative", "passive_1"] and callback.encoded.sizes == [4, 4]
    assert float(trainer.callback_metrics["val_blimp_acc"]) == callback.last_scores["blimp"]
    assert trainer.callback_metrics["val_blimp_seconds"] > 0
    spec = task_spec(task_manager([TASKS["blimp"]]), TASKS["blimp"], str(root / "nyu-mll" / "blimp"), str(tmp_path))
    module.model.eval()
    result = lm_eval.simple_evaluate(model=GPTHarnessLM(module.model, dm.tokenizer), tasks=[spec], limit=4,
                                     task_manager=task_manager([TASKS["blimp"]]), bootstrap_iters=0,
                                     verbosity="ERROR")  # fmt: skip
    accs = [result["results"][f"blimp_{p}"]["acc,none"] for p in ("causative", "passive_1")]
    assert callback.last_scores["blimp"] == pytest.approx(sum(accs) / 2)
    assert callback.last_scores["causative"] == pytest.approx(accs[0])


def test_a_checkpoint_records_the_data_it_trained_on(tmp_path):
    from callbacks import BlimpAccuracy

    wikitext = wikitext_folder(tmp_path / "wikitext")
    blimp = benchmark_mirror(tmp_path / "hub") / "nyu-mll" / "blimp"
    trainer, _, _ = fit(tmp_path, wikitext, BlimpAccuracy(data_path=str(blimp), limit=2), steps=2)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    data = torch.load(tmp_path / "m.ckpt", weights_only=True)["data"]
    assert data == {
        "class": "WikiText103",
        "path": str(wikitext),
        "name": "wikitext-103-raw-v1",
        "train_split": "train",
    }


def test_without_blimp_the_run_goes_on_and_says_so_once(tmp_path, caplog):
    """The default hub id, offline and in no local mirror: one warning, no score, training unharmed."""
    from callbacks import BlimpAccuracy

    callback = BlimpAccuracy(limit=2)
    with caplog.at_level(logging.WARNING):
        trainer, _, _ = fit(tmp_path, wikitext_folder(tmp_path / "wikitext"), callback, steps=2)
    assert trainer.global_step == 2 and "val_blimp_acc" not in trainer.callback_metrics
    assert len([r for r in caplog.records if "BLiMP is not scored" in r.getMessage()]) == 1


def test_a_local_blimp_folder_that_is_missing_is_an_error(tmp_path):
    from callbacks import BlimpAccuracy
    from lightning_gpt.errors import UserInputError

    with pytest.raises(UserInputError, match="BlimpAccuracy data_path"):
        fit(tmp_path, wikitext_folder(tmp_path / "wikitext"), BlimpAccuracy(data_path=str(tmp_path / "none")), steps=2)
    with pytest.raises(UserInputError, match="limit must be a positive integer"):
        BlimpAccuracy(limit=0)


def test_on_the_shared_blimp_sample_the_callback_scores_as_the_harness(tmp_path):
    """The shared mirror's 12 real paradigms (skipped without it): the callback's scorer and the harness's tasks give
    the same accuracy per paradigm and overall."""
    from tests.conftest import REAL_HUB

    blimp = REAL_HUB / "nyu-mll" / "blimp"
    if not blimp.is_dir():
        pytest.skip("no shared BLiMP sample at ../shared/data/hub/nyu-mll/blimp")
    lm_eval = pytest.importorskip("lm_eval")
    from lightning_gpt.evaluation.blimp import encode_paradigms, read_paradigms, score_blimp
    from lightning_gpt.evaluation.harness import GPTHarnessLM
    from lightning_gpt.evaluation.runner import task_manager, task_spec
    from lightning_gpt.evaluation.tasks import TASKS
    from lightning_gpt.model import GPT, GPTConfig
    from lightning_gpt.tokenizer import Tokenizer

    model, tokenizer = GPT(GPTConfig.from_preset("tiny", block_size=64, vocab_size=50257)).eval(), Tokenizer()
    ours = score_blimp(model, encode_paradigms(tokenizer, read_paradigms(str(blimp), 3, "x")))
    manager = task_manager([TASKS["blimp"]])
    spec = task_spec(manager, TASKS["blimp"], str(blimp), str(tmp_path))
    result = lm_eval.simple_evaluate(model=GPTHarnessLM(model, tokenizer), tasks=[spec], limit=3,
                                     task_manager=manager, bootstrap_iters=0, verbosity="ERROR")  # fmt: skip
    theirs = {name.removeprefix("blimp_"): result["results"][name]["acc,none"] for name in result["samples"]}
    assert len(theirs) == 12 and {k: v for k, v in ours.items() if k != "blimp"} == pytest.approx(theirs)
    assert ours["blimp"] == pytest.approx(sum(theirs.values()) / 12)
