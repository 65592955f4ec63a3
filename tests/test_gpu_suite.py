"""benchmarks/gpu_suite.sh --dry-run: every stage of the GPU suite, a few steps each on the CPU, so the one command
a GPU user runs keeps working. It must fill every row of the table and leave docs/benchmarks.md alone."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import synthetic_conversations, wikitext_folder, write_hub_folder

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_dry_run_measures_every_stage_and_writes_no_docs(tmp_path):
    hub = tmp_path / "hub"
    wikitext_folder(hub / "Salesforce" / "wikitext")
    chats = {"train_sft": synthetic_conversations(80, seed=1), "test_sft": synthetic_conversations(8, seed=2)}
    write_hub_folder(hub / "HuggingFaceH4" / "ultrachat_200k", chats, config="default")
    docs = (REPO / "docs" / "benchmarks.md").read_bytes()
    table = tmp_path / "table.md"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHON": sys.executable, "HF_DATASETS_CACHE": str(tmp_path / "hf")}
    done = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_suite.sh"), "--dry-run", "--data-root", str(hub), "--out", str(table)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    rows = {line.split("|")[1].strip(): line for line in table.read_text().splitlines() if line.startswith("| ")}
    expected = {"pretrain mb4", "sft", "dpo (reference live)", "dpo (reference precomputed)", "decode, KV cache",
                "decode, no cache", "LM-head loss, whole logits", "LM-head loss, chunked"}  # fmt: skip
    assert expected <= rows.keys(), rows.keys()
    assert sum("(best)" in row for row in rows.values()) == 1
    assert "Estimated wall-clock" in table.read_text()
    assert (REPO / "docs" / "benchmarks.md").read_bytes() == docs
