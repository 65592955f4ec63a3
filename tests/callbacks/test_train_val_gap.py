"""TrainValGapEarlyStopping: stops a run whose validation loss exceeds its eval-mode training loss by more than
max_gap for `patience` validations in a row, from the metrics the modules log."""

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.trainer.states import RunningStage, TrainerFn

from callbacks import TrainValGapEarlyStopping
from lightning_gpt.model import IGNORE_INDEX
from tests.conftest import (
    tiny_module,
    trainer,
    wikitext_data,
)


def fitting_trainer(tmp_path, **overrides) -> L.Trainer:
    """A real Trainer in the state the callback meets at a validation inside `fit`."""
    run = trainer(tmp_path, 100, **overrides)
    run.state.fn, run.state.stage = TrainerFn.FITTING, RunningStage.VALIDATING
    return run


def validations(gap: TrainValGapEarlyStopping, run: L.Trainer, losses: list[tuple[float, float]], every: int = 10):
    """Runs the callback's hook after validations, `every` optimizer steps, that logged these (val_loss,
    train_eval_loss); whether the run was told to stop after each."""
    stops = []
    for val_loss, train_eval_loss in losses:
        run.fit_loop.epoch_loop._batches_that_stepped += every  # the step Lightning logs the validation at
        run.callback_metrics.update(val_loss=torch.tensor(val_loss), train_eval_loss=torch.tensor(train_eval_loss))
        gap.on_validation_end(run, None)
        stops.append(run.should_stop)
    return stops


def test_a_gap_over_max_gap_for_patience_validations_in_a_row_stops_the_run(tmp_path):
    gap, run = TrainValGapEarlyStopping(max_gap=0.5, patience=2), fitting_trainer(tmp_path)
    assert validations(gap, run, [(3.0, 2.9), (3.0, 2.4), (3.1, 2.4)]) == [False, False, True]  # gaps 0.1, 0.6, 0.7
    assert float(run.callback_metrics["train_val_gap"]) == pytest.approx(0.7)  # val_loss - train_eval_loss
    assert "overfitting" in gap.stopped_reason and "by 0.7000 > max_gap 0.5 for 2 validations" in gap.stopped_reason


def test_a_gap_back_under_max_gap_starts_the_count_again(tmp_path):
    gap, run = TrainValGapEarlyStopping(max_gap=0.5, patience=2), fitting_trainer(tmp_path)
    # 0.6 over, 0.5 not over (the gap must exceed max_gap), 0.6 over, 0.2 under, 0.6 over: never twice in a row.
    losses = [(3.0, 2.4), (3.0, 2.5), (3.0, 2.4), (3.0, 2.8), (3.0, 2.4)]
    assert validations(gap, run, losses) == [False] * 5 and gap.stopped_reason is None
    assert validations(gap, run, [(3.0, 2.4)]) == [True]  # the second in a row


def test_a_healthy_run_is_never_stopped_and_its_gap_is_logged_at_the_step(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(tmp_path, name="csv")
    gap, run = TrainValGapEarlyStopping(max_gap=0.5, patience=1), fitting_trainer(tmp_path, logger=logger)
    assert validations(gap, run, [(3.0, 2.9), (2.5, 2.7), (2.0, 1.95)]) == [False] * 3  # gaps 0.1, -0.2, 0.05
    assert gap.stopped_reason is None
    assert abs(run.callback_metrics["train_val_gap"]) < 0.5
    logger.save()
    rows = (Path(logger.log_dir) / "metrics.csv").read_text().splitlines()
    assert rows[0].split(",") == ["step", "train_val_gap"]
    assert [(int(s), float(v)) for s, v in (row.split(",") for row in rows[1:])] == [
        (10, pytest.approx(0.1)), (20, pytest.approx(-0.2)), (30, pytest.approx(0.05))
    ]  # fmt: skip


def test_the_sanity_check_validate_and_test_judge_nothing(tmp_path):
    gap = TrainValGapEarlyStopping(max_gap=0.5, patience=1)
    for fn, stage in (
        (TrainerFn.FITTING, RunningStage.SANITY_CHECKING),
        (TrainerFn.VALIDATING, RunningStage.VALIDATING),
        (TrainerFn.TESTING, RunningStage.TESTING),
    ):
        run = fitting_trainer(tmp_path)
        run.state.fn, run.state.stage = fn, stage
        assert validations(gap, run, [(3.0, 1.0)]) == [False]
        assert "train_val_gap" not in run.callback_metrics and gap.wait == 0


def test_without_a_train_eval_loss_no_gap_is_judged(tmp_path):
    gap, run = TrainValGapEarlyStopping(max_gap=0.5, patience=1), fitting_trainer(tmp_path)
    run.callback_metrics["val_loss"] = torch.tensor(3.0)
    with pytest.warns(UserWarning, match="no 'train_eval_loss' was logged"):
        gap.on_validation_end(run, None)
    assert not run.should_stop and "train_val_gap" not in run.callback_metrics


def test_the_count_survives_a_resume(tmp_path):
    gap = TrainValGapEarlyStopping(max_gap=0.5, patience=2)
    assert validations(gap, fitting_trainer(tmp_path), [(3.0, 2.4)]) == [False]
    resumed = TrainValGapEarlyStopping(max_gap=0.5, patience=2)
    resumed.load_state_dict(gap.state_dict())  # what a checkpoint carries
    assert validations(resumed, fitting_trainer(tmp_path), [(3.0, 2.4)]) == [True]


@pytest.mark.slow
def test_a_real_run_stops_on_the_metrics_the_module_logs(wikitext_dir, tmp_path):
    """Lightning honours the stop, and the callback finds val_loss and train_eval_loss under the names the language
    model logs them: a max_gap that every gap exceeds stops the run at its second validation."""
    dm = wikitext_data(wikitext_dir)
    gap = TrainValGapEarlyStopping(max_gap=-100.0, patience=2)
    run = trainer(tmp_path, 10, [gap], limit_val_batches=1, val_check_interval=2, check_val_every_n_epoch=None)
    run.fit(tiny_module(dm), dm)
    assert run.global_step == 4 and "overfitting" in gap.stopped_reason
    metrics = run.callback_metrics
    assert float(metrics["train_val_gap"]) == pytest.approx(float(metrics["val_loss"] - metrics["train_eval_loss"]))


def test_the_gap_compares_eval_mode_losses_on_a_fixed_training_sample(wikitext_dir, tmp_path):
    dm = wikitext_data(wikitext_dir, eval_batch_size=4)
    gap = TrainValGapEarlyStopping(max_gap=10.0, patience=2)
    run = trainer(tmp_path, 2, [gap], limit_val_batches=3, val_check_interval=2, check_val_every_n_epoch=None)
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
