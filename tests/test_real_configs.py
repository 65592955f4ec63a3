"""The real configs, shrunk only in size: their callbacks, accumulation, dropout, workers, logger and precision run
here, with the faults a long run meets (SIGTERM, a non-finite loss) and an exact resume."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_gpt.cli import run
from lightning_gpt.training.checkpoint_plugin import SafeCheckpointIO
from tests.conftest import PRETRAIN, REPO, SFT, scalars

# What a CPU needs and nothing more: dropout 0.1, accumulate_grad_batches 4, workers, every callback and the
# TensorBoard logger stay as the config has them. 24 steps of 4 x 2 windows of 64 tokens cross two epochs.
CPU = [
    *("--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--model.preset", "tiny"),
    *("--model.block_size", "64", "--model.compile", "false", "--data.batch_size", "2", "--data.eval_batch_size", "4"),
    *("--data.num_workers", "2", "--trainer.max_steps", "24", "--trainer.val_check_interval", "16"),
    *("--trainer.limit_val_batches", "2", "--trainer.log_every_n_steps", "1"),
]


# The recipes: the config as it is, and with the faster-learning override (Muon, QK-norm, ReLU squared).
RECIPES = {"adamw": (), "fast": ("-c", str(REPO / "configs" / "pretrain_wikitext103_fast.yaml"))}


def pretrain(data_dir, version, *extra, recipe="adamw", tokenizer="bpe-300"):
    """The pretraining config's fit, shrunk. The vocabulary is a size too: a 300-token BPE trained on the data, since
    GPT-2's 50,257 rows made the embedding, head and loss 80% of a tiny model's time. The configs' own GPT-2
    tokenizer runs through every stage in tests/test_quickstart.py and tests/test_tensorboard_tags.py."""
    return ["fit", "-c", PRETRAIN, *RECIPES[recipe], "--data.path", str(data_dir), *CPU,
            "--data.tokenizer", tokenizer, "--trainer.logger.init_args.version", version, *extra]  # fmt: skip


def scalar_tags(folder: Path) -> set[str]:
    tags = set()
    for events in folder.glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    return tags


def model_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_sigterm_saves_and_the_resume_gives_the_uninterrupted_run(recipe, wikitext_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    L.seed_everything(0)
    straight = run(pretrain(wikitext_dir, "straight", recipe=recipe))
    assert straight.model.hparams.optimizer == ("muon" if recipe == "fast" else "adamw")
    assert straight.trainer.global_step == 24 and straight.trainer.current_epoch >= 2  # epoch boundaries inside
    runs = tmp_path / "runs" / "pretrain_wikitext103"

    # The same command in its own process, stopped by SIGTERM soon after its first validation (step 4).
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "lightning_gpt", *pretrain(wikitext_dir, "killed", recipe=recipe)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoints = runs / "killed" / "checkpoints"
    deadline = time.monotonic() + 600  # a loaded machine can take minutes to reach it
    while not list(checkpoints.glob("best-*.ckpt")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-3000:]
    assert "received SIGTERM: saved step" in stderr and "--ckpt_path last" in stderr and "Traceback" not in stderr
    # The console shows the project's own messages (the cache the in-process run built is reused), and neither
    # Lightning's adverts nor the deprecation warning Lightning triggers itself.
    assert "reusing the token cache" in stderr and "Tip:" not in stderr and "LeafSpec" not in stderr
    saved_at = torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"]
    assert 4 <= saved_at < 24
    assert not list(checkpoints.glob("*.tmp"))

    resumed = run(pretrain(wikitext_dir, "killed", "--ckpt_path", "last", recipe=recipe))
    assert resumed.trainer.global_step == 24
    # The throughput counters go on from the checkpoint: the same count of samples at every logged step.
    assert scalars(runs / "killed", "train/samples") == scalars(runs / "straight", "train/samples")
    assert len(scalars(runs / "straight", "train/samples")) >= 20
    # The same loss at every step, to the bit, and the same weights at the end.
    straight_losses, killed_losses = scalars(runs / "straight", "train_loss"), scalars(runs / "killed", "train_loss")
    assert sorted(straight_losses) == list(range(24))  # logged at each optimizer step
    assert killed_losses == straight_losses
    assert scalars(runs / "killed", "val_loss") == scalars(runs / "straight", "val_loss")
    a, b = model_weights(runs / "straight" / "checkpoints" / "last.ckpt"), model_weights(checkpoints / "last.ckpt")
    for name in a:
        assert torch.equal(a[name], b[name]), name


class PoisonWeightsAt(L.Callback):
    """Fault injection: one weight becomes NaN before optimizer step `step`, as an overflow would make it."""

    def __init__(self, step: int = 6) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.model.norm.weight[0] = float("nan")


@pytest.mark.slow
def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
    wikitext_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    poison = ["--trainer.callbacks+=tests.test_real_configs.PoisonWeightsAt", "--trainer.callbacks.step=6"]
    # Loss checked every 5 steps: the validation at step 8 comes first and must not save the NaN weights.
    with pytest.raises(SystemExit) as exit_info:
        run(pretrain(wikitext_dir, "nan", *poison, "--trainer.log_every_n_steps", "5", "--trainer.max_steps", "16"))
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "non-finite (nan) at step 6" in err and "Traceback" not in err
    checkpoints = tmp_path / "runs" / "pretrain_wikitext103" / "nan" / "checkpoints"
    assert f"last good checkpoint is {checkpoints / 'last.ckpt'}" in err
    last = torch.load(checkpoints / "last.ckpt", weights_only=True)
    assert last["global_step"] == 4  # from the validation at step 4, not overwritten since
    assert all(torch.isfinite(w).all() for w in last["state_dict"].values())
    assert not list(checkpoints.glob("*.tmp"))


@pytest.mark.slow
def test_validate_and_test_get_their_own_runs_and_never_touch_the_fit(wikitext_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    short = ["--trainer.max_steps", "4", "--trainer.val_check_interval", "8"]
    run(pretrain(wikitext_dir, "main", *short))
    runs = tmp_path / "runs" / "pretrain_wikitext103"
    fit_files = {p.name: p.read_bytes() for p in (runs / "main").iterdir() if p.is_file()}
    assert "config.yaml" in fit_files
    last = str(runs / "main" / "checkpoints" / "last.ckpt")
    for command in ("validate", "test", "validate"):
        args = pretrain(wikitext_dir, "main", *short, "--ckpt_path", last)
        run([command, *args[1:]])
    assert {p.name: p.read_bytes() for p in (runs / "main").iterdir() if p.is_file()} == fit_files
    last_bytes = Path(last).read_bytes()
    with pytest.raises(SystemExit) as refused:  # a fresh fit must not overwrite the earlier run's checkpoints
        run(pretrain(wikitext_dir, "main", *short))
    assert refused.value.code == 2 and Path(last).read_bytes() == last_bytes
    with pytest.raises(SystemExit) as refused:  # no flag turns weights-only loading off
        run(["validate", *pretrain(wikitext_dir, "main", "--ckpt_path", last, "--weights_only", "false")[1:]])
    assert refused.value.code == 2 and "--weights_only" in capsys.readouterr().err
    for folder in ("main-validate", "main-test", "main-validate-2"):
        assert list((runs / folder).glob("events.out.tfevents.*")) and (runs / folder / "config.yaml").is_file()
    # A resume with another setting keeps the config the run began with, and records its own beside it.
    run(pretrain(wikitext_dir, "main", "--trainer.max_steps", "6", "--trainer.val_check_interval", "8",
                 "--ckpt_path", "last"))  # fmt: skip
    assert (runs / "main" / "config.yaml").read_bytes() == fit_files["config.yaml"]
    assert "max_steps: 6" in (runs / "main" / "config-2.yaml").read_text()


def sft(data_dir, version, *extra):
    return ["fit", "-c", SFT, "--data.path", str(data_dir), *CPU, "--trainer.logger.init_args.version", version,
            "--data.val_fraction", "0.1", *extra]  # fmt: skip


@pytest.mark.slow
def test_pretrain_then_sft_in_bf16_with_every_setting_of_the_real_configs(
    wikitext_dir, ultrachat_dir, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    run(pretrain(wikitext_dir, "main", "--trainer.max_steps", "4", "--trainer.val_check_interval", "8"))
    pretrained = tmp_path / "runs" / "pretrain_wikitext103" / "main" / "checkpoints" / "last.ckpt"
    # The SFT config as it is (accumulate_grad_batches 2, dropout 0.1, workers, bf16-mixed, every callback).
    args = sft(ultrachat_dir, "main", "--trainer.precision", "bf16-mixed", "--trainer.max_steps", "6",
               "--trainer.val_check_interval", "4", "--model.init_from", str(pretrained))  # fmt: skip
    cli = run(args)
    trainer = cli.trainer
    assert trainer.precision == "bf16-mixed" and trainer.accumulate_grad_batches == 2 and trainer.global_step == 6
    assert cli.model.config.dropout == 0.1 and cli.datamodule.num_workers == 2
    assert cli.model.config.vocab_size == 300 + 4  # the pretraining's BPE and the chat tokens
    assert isinstance(trainer.strategy.checkpoint_io, SafeCheckpointIO)  # atomic saves, weights-only loads
    metrics = trainer.callback_metrics
    assert {"val_loss", "val_acc", "train_eval_loss", "train_val_gap"} <= set(metrics)
    assert torch.isfinite(metrics["val_loss"]) and torch.isfinite(metrics["train_eval_loss"])
    run_dir = tmp_path / "runs" / "sft_ultrachat" / "main"
    assert scalars(run_dir, "train_loss").keys() == set(range(6))
    # Each metric's stages side by side (loss/train, loss/val), the schedule under its name, no hp_metric of -1.
    tags = scalar_tags(run_dir)
    assert {"loss/train", "loss/val", "loss/train_eval", "acc/val", "learning_rate/decayed", "tokens_seen"} <= tags
    assert not {"train_loss", "val_loss", "hp_metric", "lr-AdamW/pg1"} & tags
    # Throughput counts real tokens, not padding: its running count is the module's tokens_seen at every log point.
    assert {"train/device/items_per_sec", "train/device/flops_per_sec"} <= tags
    assert scalars(run_dir, "train/lengths") == scalars(run_dir, "tokens_seen")
    samples = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    samples.Reload()
    assert "samples/0/text_summary" in samples.Tags()["tensors"]  # GenerateSamples ran under bf16
    os.remove(pretrained)  # a resume needs only the SFT checkpoint
    resumed = run([*args[:-2], "--trainer.max_steps", "8", "--ckpt_path", "last"])
    assert resumed.trainer.global_step == 8
    assert resumed.model.tokens_seen > cli.model.tokens_seen  # counted across the resume, not from zero


@pytest.mark.slow
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_two_cpu_processes_give_the_losses_of_one_with_the_doubled_batch(recipe, wikitext_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # Dropout 0 here: each rank draws its own dropout masks, so only a deterministic model compares value by value.
    same = ["--model.dropout", "0", "--trainer.max_steps", "8", "--trainer.val_check_interval", "16",
            "--trainer.limit_val_batches", "null", "--data.num_workers", "0"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ddp = pretrain(wikitext_dir, "ddp", "-c", str(REPO / "configs" / "multi_gpu.yaml"), *same, "--trainer.devices", "2",
                   recipe=recipe)  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "lightning_gpt", *ddp], env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    run(pretrain(wikitext_dir, "single", *same, "--data.batch_size", "4", "--data.eval_batch_size", "8", recipe=recipe))
    runs = tmp_path / "runs" / "pretrain_wikitext103"
    for tag in ("train_loss", "val_loss"):
        two, one = scalars(runs / "ddp", tag), scalars(runs / "single", tag)
        assert two.keys() == one.keys() and len(one) >= 2, tag
        for step in one:
            assert two[step] == pytest.approx(one[step], abs=1e-5), (tag, step)


def _evil_checkpoint(path: Path, marker: Path) -> None:
    class RunsCode:
        def __reduce__(self):
            return open, (str(marker), "w")

    torch.save({"state_dict": RunsCode(), "hyper_parameters": {}}, path)


@pytest.mark.parametrize("kind", ["empty", "truncated", "random", "code", "http://host/x.ckpt"])
@pytest.mark.parametrize("command", ["fit", "validate"])
def test_a_bad_ckpt_path_is_one_message_and_runs_nothing(kind, command, wikitext_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path, marker = tmp_path / f"{kind}.ckpt", tmp_path / "ran"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        torch.save({"state_dict": {"w": torch.zeros(1000)}}, path)
        path.write_bytes(path.read_bytes()[:3000])
    elif kind == "random":
        path.write_bytes(os.urandom(5000))
    elif kind == "code":
        _evil_checkpoint(path, marker)
    else:
        path = kind
    with pytest.raises(SystemExit) as exit_info:
        run([command, *pretrain(wikitext_dir, "bad", "--ckpt_path", str(path))[1:]])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"--ckpt_path {path}" in err and "Traceback" not in err
    assert not marker.exists()


class SigtermAt(L.Callback):
    """Sends this process a real SIGTERM in the middle of optimizer step `step`'s accumulation window."""

    def __init__(self, step: int = 3) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step and batch_idx % trainer.accumulate_grad_batches == 1:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.slow
def test_a_sigterm_before_a_validation_step_keeps_that_validation(wikitext_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    short = ["--trainer.max_steps", "8"]  # validation after steps 4 and 8
    run(pretrain(wikitext_dir, "straight", *short))
    sigterm = ["--trainer.callbacks+=tests.test_real_configs.SigtermAt", "--trainer.callbacks.step=3"]
    with pytest.raises(SystemExit) as exit_info:
        run(pretrain(wikitext_dir, "killed", *short, *sigterm))  # step 4 ends, validates, then stops
    assert exit_info.value.code == 143 and "saved step 4" in capsys.readouterr().err
    run(pretrain(wikitext_dir, "killed", *short, "--ckpt_path", "last"))
    runs = tmp_path / "runs" / "pretrain_wikitext103"
    for tag in ("train_loss", "val_loss", "train_eval_loss"):
        assert scalars(runs / "killed", tag) == scalars(runs / "straight", tag), tag
    assert len(scalars(runs / "straight", "val_loss")) == 2
