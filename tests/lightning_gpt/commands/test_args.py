"""Bad input to generate, chat and evaluate-chat: one `lightning-gpt: error:` line naming the flag, exit code 2."""

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_gpt.__main__ import main


def run_failing(monkeypatch, capsys, *argv: str) -> str:
    """Runs the CLI as its console script does and returns stderr, checking that it failed as a user error."""
    monkeypatch.setattr(sys, "argv", ["lightning-gpt", *argv])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert err.startswith("lightning-gpt: error: ") and "Traceback" not in err
    return err


MISSING = "no-such-dir/never.ckpt"  # a flag must be refused before the checkpoint is even looked at


def command_line(command: str, ckpt_path: str, *flags: str) -> list[str]:
    """generate also needs a --prompt."""
    return [command, "--ckpt_path", ckpt_path, *(["--prompt", "a"] if command == "generate" else []), *flags]


@pytest.mark.parametrize("command", ["generate", "chat"])
@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--temperature", "nan", "--temperature must be a finite number >= 0, got nan"),
        ("--temperature", "inf", "--temperature must be a finite number >= 0, got inf"),
        ("--temperature", "-1", "--temperature must be a finite number >= 0, got -1.0"),
        ("--top_p", "1.5", "--top_p must be in (0, 1], got 1.5"),
        ("--top_p", "0", "--top_p must be in (0, 1], got 0.0"),
        ("--top_p", "nan", "--top_p must be in (0, 1], got nan"),
        ("--top_k", "0", "--top_k must be a positive integer, got 0"),
        ("--repetition_penalty", "0", "--repetition_penalty must be a finite number > 0, got 0.0"),
        ("--repetition_penalty", "nan", "--repetition_penalty must be a finite number > 0, got nan"),
        ("--max_new_tokens", "-1", "--max_new_tokens must be >= 0, got -1"),
    ],
)
def test_bad_sampling_flags_are_named_before_the_checkpoint_is_read(monkeypatch, capsys, command, flag, value, says):
    err = run_failing(monkeypatch, capsys, *command_line(command, MISSING, flag, value))
    assert says in err and "--ckpt_path" not in err


def test_evaluate_chat_checks_its_flags_before_the_checkpoint(monkeypatch, capsys):
    for flag, value in (("--max_new_tokens", "-1"), ("--num_samples", "0"), ("--batch_size", "-2")):
        err = run_failing(monkeypatch, capsys, "evaluate-chat", "--ckpt_path", MISSING, flag, value)
        assert flag in err and value in err and "--ckpt_path" not in err


@pytest.mark.parametrize("device", ["cuda:3", "cuda", "tpu", "cuda:abc"])
def test_a_device_this_machine_lacks_is_a_device_problem(checkpoints, monkeypatch, capsys, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a CPU-only machine, wherever it runs
    err = run_failing(monkeypatch, capsys, *command_line("generate", checkpoints["pretrain"], "--device", device))
    assert f"--device {device}:" in err and "pass one of: auto, cpu" in err
    assert "--ckpt_path" not in err
    if device.startswith("cuda:"):
        assert "no CUDA GPU is available here" in err or "not a device name" in err


def test_a_gpu_index_past_the_last_gpu_lists_the_ones_there(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a pretend machine with two GPUs
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    err = run_failing(monkeypatch, capsys, "chat", "--ckpt_path", MISSING, "--device", "cuda:3")
    assert "--device cuda:3: this machine has 2 CUDA GPU(s); pass one of: auto, cpu, cuda, cuda:0, cuda:1" in err


def bad_checkpoint(kind: str, folder: Path, real: str) -> str:
    """A --ckpt_path value of the given kind: a file made in `folder`, or a remote address."""
    if "://" in kind:
        return kind
    path = folder / f"{kind}.ckpt"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = Path(real).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "random":
        path.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    elif kind == "pickle":
        path.write_bytes(pickle.dumps({"state_dict": {}}))  # a pickle, not torch's zip format
    elif kind == "pickle-v2":
        path.write_bytes(pickle.dumps({"state_dict": {}}, protocol=2))
    return str(path)


@pytest.mark.parametrize("command", ["generate", "chat"])
@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("empty", "the file is empty"),
        ("truncated", "the file is truncated or damaged"),
        ("random", "the file is truncated or damaged"),
        ("pickle", "is not in torch.save's zip format"),
        ("pickle-v2", "is not in torch.save's zip format"),
        ("http://example.com/model.ckpt", "remote checkpoints are not loaded; download the file first"),
        ("https://example.com/model.ckpt", "remote checkpoints are not loaded; download the file first"),
        ("s3://bucket/runs/last.ckpt", "remote checkpoints are not loaded; download the file first"),
    ],
)
def test_a_bad_checkpoint_file_gets_one_message(checkpoints, monkeypatch, capsys, tmp_path, command, kind, says):
    path = bad_checkpoint(kind, tmp_path, checkpoints["pretrain"])
    err = run_failing(monkeypatch, capsys, *command_line(command, path, "--device", "cpu"))
    assert f"--ckpt_path {path}" in err and says in err
    assert "lightning-gpt fit" in err or "download the file first" in err  # what to do
    assert err.count("\n") == 1  # one line


class RunsCode:
    """A pickle payload: unpickling it calls open(marker, "w"), i.e. runs code that creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(monkeypatch, capsys, tmp_path):
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(RunsCode(control))).close()
    assert control.exists()  # the payload works: a full unpickle runs it
    marker = tmp_path / "ran"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": RunsCode(marker), "hyper_parameters": {}}, path)
    err = run_failing(monkeypatch, capsys, "generate", "--ckpt_path", str(path), "--prompt", "a")
    assert not marker.exists()
    assert f"--ckpt_path {path} is not a readable lightning-gpt checkpoint: it holds objects other than weights" in err
    assert "(io.open)" in err
    assert "weights_only=False" not in err  # torch's advice to turn the check off is not passed on


@pytest.mark.slow
def test_the_console_script_prints_no_traceback_for_a_malicious_checkpoint(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": RunsCode(marker)}, path)
    done = subprocess.run(
        [sys.executable, "-m", "lightning_gpt", "chat", "--ckpt_path", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])},
    )
    assert done.returncode == 2 and not marker.exists()
    assert done.stderr.startswith(f"lightning-gpt: error: --ckpt_path {path}") and "Traceback" not in done.stderr
