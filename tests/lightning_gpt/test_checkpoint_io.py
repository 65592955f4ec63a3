"""Checkpoint files read without running code from them (lightning_gpt/checkpoint_io.py): every unusable file is one
UserInputError naming the flag and the file."""

import pickle
import random
from pathlib import Path

import pytest
import torch

from lightning_gpt.checkpoint_io import check_ckpt_path
from lightning_gpt.errors import UserInputError
from lightning_gpt.training.checkpoint_plugin import SafeCheckpointIO
from tests.conftest import small_checkpoint


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


UNREADABLE = "is not a readable lightning-gpt checkpoint"
