"""Atomic saves (lightning_gpt/atomic.py, as SafeCheckpointIO saves checkpoints): neither an exception nor a SIGKILL
during a save breaks the previous checkpoint, and what killed saves left behind is removed."""

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lightning_gpt.atomic import HOST, remove_leftovers
from lightning_gpt.training.checkpoint_plugin import SafeCheckpointIO
from tests.conftest import REPO, live_temp_file, small_checkpoint, temp_files


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


@pytest.mark.slow
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
