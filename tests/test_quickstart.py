"""The README's quickstart, run as a new user runs it: its commands read from the README itself (between the
`quickstart:begin` and `quickstart:end` markers), in a copy of the repository's tracked files with no `../shared`
beside it and the hub offline. Only extra overrides are added (fewer steps, a free port), never other commands."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- quickstart:begin -->", "<!-- quickstart:end -->"
# Time only: each fit a few optimizer steps and one short validation (the sample and the configs are the README's).
SHORT_FIT = ["--trainer.max_steps", "4", "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "2"]


def quickstart_commands(readme: str) -> list[str]:
    """The shell commands of the marked block: comments dropped, continuation lines joined."""
    block = readme.split(BEGIN, 1)[1].split(END, 1)[0]
    body = re.search(r"```bash\n(.*?)```", block, re.S).group(1)
    commands = []
    for line in body.replace("\\\n", " ").splitlines():
        line = line.split(" #", 1)[0].strip()  # a trailing comment (no command here quotes a " #")
        if line and not line.startswith("#"):
            commands.append(line)
    return commands


def test_the_readme_marks_a_quickstart_that_runs_every_stage():
    commands = quickstart_commands((REPO / "README.md").read_text())
    words = [shlex.split(c) for c in commands]
    stages = [next(w[i + 1] for i, t in enumerate(w) if t == "lightning-gpt") for w in words]
    assert stages == ["fit", "fit", "fit", "generate", "chat", "serve"]
    assert not any("shared" in c or "/main/" in c for c in commands)  # the smoke run's own paths, no ../shared


def repository_copy(dest: Path) -> Path:
    """The tracked files of this checkout (as a fresh clone has them), with uncommitted edits."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in files.decode().split("\0"):
        if name and (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes((REPO / name).read_bytes())
    return dest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shell(command: str, extra: list[str]) -> str:
    """The README's line with `lightning-gpt` as this interpreter's `-m lightning_gpt` (the copy's package) and the
    extra overrides after its arguments."""
    head = f'lightning-gpt() {{ {shlex.quote(sys.executable)} -m lightning_gpt "$@"; }}\n'
    return head + command + (" " + shlex.join(extra) if extra else "")


def wait_for_models(port: int, server: subprocess.Popen, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, server.stdout.read()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as response:
                return json.loads(response.read())
        except OSError:
            time.sleep(1)
    raise AssertionError("the server did not answer /v1/models in time")


@pytest.mark.slow
def test_quickstart_runs_from_a_fresh_copy_offline(tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    repo = repository_copy(tmp_path / "clone")
    assert not (repo.parent / "shared").exists()
    env = {
        **os.environ,
        "PYTHONPATH": str(repo),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "COLUMNS": "120",
    }
    located = subprocess.run(
        [sys.executable, "-c", "import lightning_gpt; print(lightning_gpt.__file__)"],
        cwd=repo,
        env=env,
        text=True,
        capture_output=True,
        check=True,
    )
    assert Path(located.stdout.strip()).is_relative_to(repo)  # the copy's package (and its sample data) runs
    outputs = []
    for command in quickstart_commands((repo / "README.md").read_text()):
        words = shlex.split(command)
        name = words[words.index("lightning-gpt") + 1]
        if name == "serve":
            port = free_port()
            server = subprocess.Popen(
                ["bash", "-c", shell(command, ["--port", str(port)])],
                cwd=repo,
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                models = wait_for_models(port, server)
            finally:
                os.killpg(server.pid, 15)
                server.wait(timeout=60)
            assert models["data"] and models["object"] == "list"
            continue
        extra = {"fit": SHORT_FIT, "generate": ["--max_new_tokens", "16"], "chat": ["--max_new_tokens", "16"]}[name]
        done = subprocess.run(
            ["bash", "-c", shell(command, extra)], cwd=repo, env=env, text=True, capture_output=True, timeout=1200
        )
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        outputs.append((name, done.stdout, done.stderr))
    for run in ("pretrain_wikitext103", "sft_ultrachat", "dpo_ultrafeedback"):
        assert (repo / "runs" / run / "smoke" / "checkpoints" / "last.ckpt").is_file()
    generated = outputs[3][1]
    assert generated.startswith("The history of the city")
    answers = outputs[4][1].splitlines()
    assert len(answers) == 1  # one message piped in, one answer line out
    for _, stdout, stderr in outputs:
        assert "\ufffd" not in stdout
        assert "Warning:" not in stderr and "site-packages" not in stderr  # no raw Python warnings
