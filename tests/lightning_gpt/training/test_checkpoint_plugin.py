"""SafeCheckpointIO: saves that neither an exception nor a SIGKILL can break, loads that run no code from the file,
and one clear UserInputError for every checkpoint that cannot be used."""

import contextlib
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.plugins.io import AsyncCheckpointIO

from callbacks import TrainValGapEarlyStopping
from lightning_gpt.atomic import HOST, remove_leftovers
from lightning_gpt.checkpoint_io import check_ckpt_path
from lightning_gpt.errors import UserInputError
from lightning_gpt.training.checkpoint_plugin import SafeCheckpointIO, use_safe_checkpoint_io
from tests.conftest import REPO, tiny_module, trainer, wikitext_data

UNREADABLE = "is not a readable lightning-gpt checkpoint"


def small_checkpoint(step: int = 0) -> dict:
    return {
        "state_dict": {"model.w": torch.arange(1000, dtype=torch.float32) + step, "model.b": torch.zeros(3, 3)},
        "global_step": step,
        "hyper_parameters": {"preset": "tiny", "betas": (0.9, 0.95), "init_from": None},
    }


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(".*.tmp"))


def live_temp_file(folder: Path, name: str = "last.ckpt") -> Path:
    """A temp file named as a save of this (live) test process writes it."""
    path = folder / f".{name}.{HOST}-{os.getpid()}.0123abcd.tmp"
    path.write_bytes(b"half a checkpoint")
    return path


@pytest.mark.parametrize("error", [RuntimeError("No space left on device"), KeyboardInterrupt()], ids=type)
def test_a_save_that_fails_midway_keeps_the_previous_checkpoint(tmp_path, monkeypatch, error):
    io, dest = SafeCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint(small_checkpoint(1), dest)
    before = dest.read_bytes()

    def save_then_fail(obj, f, *args, **kwargs):  # some bytes reach the file, then the save dies
        if isinstance(f, (str, os.PathLike)):
            with open(f, "wb") as file:
                file.write(b"PK\x03\x04 half a checkpoint")
        else:
            f.write(b"PK\x03\x04 half a checkpoint")
        raise error

    monkeypatch.setattr(torch, "save", save_then_fail)
    with pytest.raises(type(error)):
        io.save_checkpoint(small_checkpoint(2), dest)
    assert dest.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temp file left


# Forks one saver per line read: each saves a 64 MB checkpoint in a loop until it is killed. Forking from one
# process that has imported torch and Lightning once keeps the test to a few seconds.
SAVER = r"""
import os, sys, torch
from lightning_gpt.training.checkpoint_plugin import SafeCheckpointIO
torch.set_num_threads(1)
dest = sys.argv[1]
checkpoint = {"state_dict": {"model.w": torch.arange(16_000_000, dtype=torch.float32)}, "global_step": 0}
for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        try:
            io = SafeCheckpointIO()
            while True:
                checkpoint["global_step"] += 1
                io.save_checkpoint(checkpoint, dest)
        finally:
            os._exit(1)
    print(pid, flush=True)
    os.waitpid(pid, 0)
    print("reaped", flush=True)
"""


def wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def has_bytes(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:  # renamed onto the checkpoint meanwhile
        return False


def test_sigkill_during_saves_never_breaks_the_checkpoint(tmp_path):
    dest = tmp_path / "last.ckpt"
    expected = torch.arange(16_000_000, dtype=torch.float32)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    server = subprocess.Popen(
        [sys.executable, "-c", SAVER, str(dest)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    rng, left_behind, running = random.Random(0), 0, None
    try:
        for round_ in range(6):
            server.stdin.write("save\n")
            server.stdin.flush()
            saver = running = int(server.stdout.readline())
            wait_for(dest.exists)
            if round_ < 4:  # anywhere: writing, fsyncing, renaming or between saves
                time.sleep(rng.uniform(0.0, 0.4))
            else:  # surely mid-save: as soon as this saver's temp file has bytes in it
                pattern = f".last.ckpt.{HOST}-{saver}.*.tmp"
                wait_for(lambda pattern=pattern: any(has_bytes(p) for p in tmp_path.glob(pattern)))
            os.kill(saver, signal.SIGKILL)
            assert server.stdout.readline().strip() == "reaped"
            running = None  # its pid may be reused from now on

            checkpoint = SafeCheckpointIO().load_checkpoint(dest)  # weights only, and complete
            assert checkpoint["global_step"] >= 1
            assert torch.equal(checkpoint["state_dict"]["model.w"], expected)
            stale = [name for name in temp_files(tmp_path) if name.startswith(f".last.ckpt.{HOST}-{saver}.")]
            left_behind += bool(stale)
            live = live_temp_file(tmp_path)
            assert sorted(p.name for p in remove_leftovers(tmp_path)) == stale
            assert temp_files(tmp_path) == [live.name]  # a live process's temp file stays
            live.unlink()
        assert left_behind >= 2  # the kills did land mid-save
    finally:  # a failed assertion must not leave a saver running
        if running is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(running, signal.SIGKILL)
        server.kill()
        server.wait()


def test_stale_temp_files_are_removed_before_the_first_save_only(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".last.ckpt.{HOST}-{dead.pid}.00000000.tmp"
    other_host = tmp_path / f".last.ckpt.{'f' * 6 if HOST != 'f' * 6 else '0' * 6}-{dead.pid}.00000000.tmp"
    unrelated = tmp_path / f".notes.{dead.pid}.tmp"
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


class WritesMarker:
    """Unpickling this runs open(marker, "x"): code execution from a checkpoint file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "x"))


def test_a_checkpoint_that_runs_code_is_refused_and_runs_nothing(tmp_path):
    marker, path = tmp_path / "marker", tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "payload": WritesMarker(marker)}, path)
    torch.load(path, weights_only=False)  # the file is armed: a plain load runs its code
    assert marker.exists()
    marker.unlink()

    with pytest.raises(UserInputError, match="objects other than weights .* not loaded for safety") as err:
        SafeCheckpointIO().load_checkpoint(path)
    assert str(path) in str(err.value) and UNREADABLE in str(err.value)
    with pytest.raises(UserInputError, match="--weights_only false"):
        SafeCheckpointIO().load_checkpoint(path, weights_only=False)
    assert not marker.exists()


def bad_file(kind: str, folder: Path) -> Path:
    path = folder / f"{kind}.ckpt"
    good = folder / "good.ckpt"
    SafeCheckpointIO().save_checkpoint(small_checkpoint(), good)
    data = good.read_bytes()
    if kind == "missing":
        return path
    if kind == "folder":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated_half":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "truncated_tail":
        path.write_bytes(data[:-10])
    elif kind == "random_bytes":
        path.write_bytes(random.Random(0).randbytes(4096))
    elif kind == "plain_pickle":
        path.write_bytes(pickle.dumps({"state_dict": {"w": [1.0, 2.0]}}))
    elif kind == "not_a_dict":
        torch.save(torch.ones(3), path)
    return path


@pytest.mark.parametrize(
    "kind",
    ["missing", "folder", "empty", "truncated_half", "truncated_tail", "random_bytes", "plain_pickle", "not_a_dict"],
)
def test_an_unusable_file_is_one_clear_error(tmp_path, kind):
    path = bad_file(kind, tmp_path)
    with pytest.raises(UserInputError) as err:
        SafeCheckpointIO().load_checkpoint(path)
    assert str(err.value).startswith(f"--ckpt_path {path} {UNREADABLE}: ")


@pytest.mark.parametrize(
    "url", ["http://example.com/last.ckpt", "https://example.com/last.ckpt", "s3://bucket/last.ckpt", "gs://b/x.ckpt"]
)
def test_remote_checkpoints_are_refused(tmp_path, url):
    message = f"--ckpt_path {url}: remote checkpoints are not loaded; download the file first and pass its local path"
    with pytest.raises(UserInputError, match=message):
        SafeCheckpointIO().load_checkpoint(url)
    with pytest.raises(UserInputError, match=message):
        SafeCheckpointIO().load_checkpoint(url, weights_only=True)
    with pytest.raises(UserInputError, match=message):
        check_ckpt_path(url)
    with pytest.raises(UserInputError, match=url):
        SafeCheckpointIO().save_checkpoint(small_checkpoint(), url)


def test_weights_only_cannot_be_turned_off(tmp_path):
    path = tmp_path / "good.ckpt"
    io = SafeCheckpointIO()
    io.save_checkpoint(small_checkpoint(3), path)
    assert io.load_checkpoint(path)["global_step"] == 3
    assert io.load_checkpoint(path, weights_only=True)["global_step"] == 3
    with pytest.raises(UserInputError, match="--weights_only false"):
        io.load_checkpoint(path, weights_only=False)


def test_check_ckpt_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no file named like a keyword here
    for value in (None, "last", "best", "hpc"):
        check_ckpt_path(value)
    with pytest.raises(UserInputError, match=r"^--ckpt_path https://host/m.ckpt: remote checkpoints are not loaded"):
        check_ckpt_path("https://host/m.ckpt")
    with pytest.raises(UserInputError, match=rf"^--ckpt_path {tmp_path / 'nope.ckpt'} {UNREADABLE}: no such file"):
        check_ckpt_path(tmp_path / "nope.ckpt")
    with pytest.raises(UserInputError, match=r"^--model.init_from nope.ckpt "):
        check_ckpt_path("nope.ckpt", flag="--model.init_from")
    with pytest.raises(UserInputError, match="truncated"):
        check_ckpt_path(bad_file("truncated_half", tmp_path))

    def no_loading(*args, **kwargs):
        raise AssertionError("check_ckpt_path loaded the checkpoint")

    monkeypatch.setattr(torch, "load", no_loading)
    check_ckpt_path(tmp_path / "good.ckpt")  # written by bad_file: a real checkpoint passes without a load
    check_ckpt_path(str(tmp_path / "good.ckpt"))


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
