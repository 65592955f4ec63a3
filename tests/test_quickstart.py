"""The README's quickstart, run as a new user runs it: its commands read from the README itself (between the
`quickstart:begin` and `quickstart:end` markers), in a copy of the repository's tracked files with no `../shared`
beside it and the hub offline. Only extra overrides are added (fewer steps, smaller batches, a free port), never other
commands."""

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

from tests.conftest import parse_only, repository_copy

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- quickstart:begin -->", "<!-- quickstart:end -->"
# Time only: each fit two optimizer steps of 2 windows, then one short validation and its checkpoint, with no sanity
# check before them (the sample and the configs are the README's).
SHORT_FIT = ["--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "2"]
SHORT_FIT += ["--trainer.num_sanity_val_steps", "0", "--data.batch_size", "2", "--data.eval_batch_size", "2"]


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
        # Seeded: an unseeded sample is a different text each run, and may hold a line separator or bytes that are not
        # UTF-8, which the assertions below would read as the console's fault.
        sampled = ["--max_new_tokens", "16", "--seed", "0"]
        extra = {"fit": SHORT_FIT, "generate": sampled, "chat": sampled}[name]
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


SAMPLES = {  # folder: (config name, {split: rows}), as lightning_gpt/sample_data/README.md states them
    "Salesforce/wikitext": ("wikitext-103-raw-v1", {"train": 1019, "validation": 554}),
    "HuggingFaceH4/ultrachat_200k": (None, {"train_sft": 160, "test_sft": 40}),
    "HuggingFaceH4/ultrafeedback_binarized": (None, {"train_prefs": 160, "test_prefs": 40}),
}


def test_the_built_in_samples_load_as_hub_datasets_and_stay_small(tmp_path):
    import datasets

    from lightning_gpt.sample import SAMPLE_ROOT

    for folder, (name, splits) in SAMPLES.items():
        for split, rows in splits.items():
            loaded = datasets.load_dataset(str(SAMPLE_ROOT / folder), name, split=split, cache_dir=str(tmp_path))
            assert len(loaded) == rows
        assert "license:" in (SAMPLE_ROOT / folder / "README.md").read_text()
    size = sum(f.stat().st_size for f in SAMPLE_ROOT.rglob("*") if f.is_file())
    assert size <= 2 * 2**20
    readme = (SAMPLE_ROOT / "README.md").read_text()
    assert all(word in readme for word in ("CC BY-SA 3.0", "MIT", "huggingface.co/datasets"))


@pytest.mark.parametrize(
    ("config", "folder"),
    [
        ("pretrain_wikitext103.yaml", "Salesforce/wikitext"),
        ("sft_ultrachat.yaml", "HuggingFaceH4/ultrachat_200k"),
        ("dpo_ultrafeedback.yaml", "HuggingFaceH4/ultrafeedback_binarized"),
        ("reward_ultrafeedback.yaml", "HuggingFaceH4/ultrafeedback_binarized"),
    ],
)
def test_smoke_runs_read_the_sample_and_real_runs_the_hub(config, folder):
    from lightning_gpt.sample import SAMPLE_ROOT

    smoke = parse_only(["-c", str(REPO / "configs" / config), "-c", str(REPO / "configs/smoke.yaml")])
    assert Path(smoke.datamodule.path) == SAMPLE_ROOT / folder
    real = parse_only(["-c", str(REPO / "configs" / config), "--trainer.accelerator", "cpu"])
    assert real.datamodule.path == folder  # the hub id


def test_a_data_module_without_a_sample_says_so():
    from lightning_gpt.cli import build_cli
    from lightning_gpt.errors import UserInputError

    cli = build_cli(["-c", str(REPO / "configs/pretrain_text.yaml"), "-c", str(REPO / "configs/smoke.yaml")], run=False)
    with pytest.raises(UserInputError, match=r"--data.path sample: TextFiles has no built-in sample.*--data.path DIR"):
        cli.datamodule.prepare_data()


@pytest.mark.slow
def test_the_wheel_carries_the_sample(tmp_path):
    import zipfile

    from lightning_gpt.sample import SAMPLE_ROOT

    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(repository_copy(tmp_path / "src")), "--no-deps"]
        + ["--no-build-isolation", "-q", "-w", str(tmp_path / "dist")],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"lightning_gpt/sample_data/{f.relative_to(SAMPLE_ROOT)}" for f in SAMPLE_ROOT.rglob("*") if f.is_file()}
    assert shipped and shipped <= names
