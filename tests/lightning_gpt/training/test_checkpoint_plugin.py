"""SafeCheckpointIO, the Trainer's checkpoint plugin: it is on every run whatever --trainer.plugins says, cleans what
killed saves left once per folder, never loads with weights_only off, and its checkpoints resume a run."""

import lightning as L
import pytest
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.plugins.io import AsyncCheckpointIO

from callbacks import TrainValGapEarlyStopping
from lightning_gpt.atomic import HOST
from lightning_gpt.errors import UserInputError
from lightning_gpt.training.checkpoint_plugin import SafeCheckpointIO, use_safe_checkpoint_io
from tests.conftest import dead_pid, live_temp_file, small_checkpoint, temp_files, tiny_module, trainer, wikitext_data


def test_stale_temp_files_are_removed_before_the_first_save_only(tmp_path):
    dead = dead_pid()
    stale = tmp_path / f".last.ckpt.{HOST}-{dead}.00000000.tmp"
    other_host = tmp_path / f".last.ckpt.{'f' * 6 if HOST != 'f' * 6 else '0' * 6}-{dead}.00000000.tmp"
    unrelated = tmp_path / f".notes.{dead}.tmp"
    for path in (stale, other_host, unrelated):
        path.write_bytes(b"x")
    live = live_temp_file(tmp_path)
    io = SafeCheckpointIO()
    io.save_checkpoint(small_checkpoint(), tmp_path / "last.ckpt")
    assert not stale.exists()
    assert other_host.exists() and unrelated.exists() and live.exists()
    stale.write_bytes(b"x")
    io.save_checkpoint(small_checkpoint(), tmp_path / "last.ckpt")  # the folder was cleaned once already
    assert stale.exists()


def test_weights_only_cannot_be_turned_off(tmp_path):
    path = tmp_path / "good.ckpt"
    io = SafeCheckpointIO()
    io.save_checkpoint(small_checkpoint(3), path)
    assert io.load_checkpoint(path)["global_step"] == 3
    assert io.load_checkpoint(path, weights_only=True)["global_step"] == 3
    with pytest.raises(UserInputError, match="--weights_only false"):
        io.load_checkpoint(path, weights_only=False)


def test_use_safe_checkpoint_io_closes_the_flag_that_would_drop_it():
    args = {"accelerator": "cpu", "logger": False, "enable_checkpointing": False}
    default = L.Trainer(**args)
    use_safe_checkpoint_io(default)
    assert isinstance(default.strategy.checkpoint_io, SafeCheckpointIO)
    given = SafeCheckpointIO()
    for plugins in ([given], [AsyncCheckpointIO(given)]):
        chosen = L.Trainer(**args, plugins=plugins)
        use_safe_checkpoint_io(chosen)
        assert chosen.strategy.checkpoint_io is plugins[0]

    class OtherIO(TorchCheckpointIO):
        pass

    for plugins in ([OtherIO()], [AsyncCheckpointIO()]):
        with pytest.raises(UserInputError, match="--trainer.plugins"):
            use_safe_checkpoint_io(L.Trainer(**args, plugins=plugins))


def test_lightning_gpt_checkpoints_load_weights_only_and_resume(wikitext_dir, tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    callbacks = [  # the callbacks of configs/pretrain_wikitext103.yaml that keep a state
        ModelCheckpoint(dirpath=folder, monitor="val_loss", filename="best-{step}", save_last=True),
        ModelCheckpoint(dirpath=folder, every_n_train_steps=2, save_top_k=-1, filename="step-{step}"),
        EarlyStopping(monitor="val_loss", patience=4),
        TrainValGapEarlyStopping(max_gap=100.0, patience=2),
    ]
    dm, io = wikitext_data(wikitext_dir), SafeCheckpointIO()
    fit = trainer(
        tmp_path, 4, callbacks, plugins=[io], enable_checkpointing=True, limit_val_batches=2, val_check_interval=2
    )
    fit.fit(tiny_module(dm), dm)
    assert fit.strategy.checkpoint_io is io
    last = folder / "last.ckpt"
    assert temp_files(folder) == [] and last.is_file()

    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["hyper_parameters"]["betas"] == (0.9, 0.95)
    assert checkpoint["hyper_parameters"]["init_from"] is None and checkpoint["hyper_parameters"]["preset"] == "tiny"
    assert set(checkpoint["WikiText103"]) == {"epoch", "batches", "seed"}
    assert {"EarlyStopping", "TrainValGapEarlyStopping", "ModelCheckpoint"} <= {
        key.split("{")[0] for key in checkpoint["callbacks"]
    }
    assert checkpoint["optimizer_states"] and checkpoint["lr_schedulers"] and checkpoint["global_step"] == 4

    loads = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        loads.append((str(args[0]), kwargs.get("weights_only")))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    dm = wikitext_data(wikitext_dir)
    resumed = trainer(tmp_path, 6, plugins=[SafeCheckpointIO()])
    resumed.fit(tiny_module(dm), dm, ckpt_path=last)
    assert resumed.global_step == 6
    assert loads == [(str(last), True)]

    with pytest.raises(UserInputError, match="--weights_only false"):
        trainer(tmp_path, 6, plugins=[SafeCheckpointIO()]).validate(
            tiny_module(dm), dm, ckpt_path=last, weights_only=False, verbose=False
        )
