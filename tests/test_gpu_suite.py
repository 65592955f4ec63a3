"""benchmarks/gpu_suite.sh --dry-run: every stage of the GPU suite, a few steps each on the CPU, so the one command
a GPU user runs keeps working. It must fill every row of the table and leave docs/benchmarks.md alone."""

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import repository_copy

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_dry_run_measures_every_stage_and_writes_no_docs(tmp_path):
    # In a copy of the tracked files with no ../shared beside it: the dry run reads the built-in sample.
    repo = repository_copy(tmp_path / "clone")
    docs = (repo / "docs" / "benchmarks.md").read_bytes()
    table = tmp_path / "table.md"
    env = {**os.environ, "PYTHONPATH": str(repo), "PYTHON": sys.executable, "HF_DATASETS_CACHE": str(tmp_path / "hf")}
    done = subprocess.run(
        ["bash", str(repo / "benchmarks" / "gpu_suite.sh"), "--dry-run", "--out", str(table)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    rows = {line.split("|")[1].strip(): line for line in table.read_text().splitlines() if line.startswith("| ")}
    expected = {"pretrain mb4", "pretrain fast mb4", "sft", "dpo (reference live)", "dpo (reference precomputed)",
                "decode, KV cache", "decode, no cache", "LM-head loss, whole logits",
                "LM-head loss, chunked"}  # fmt: skip
    assert expected <= rows.keys(), rows.keys()
    assert sum("(best)" in row for row in rows.values()) == 1 and "(best)" not in rows["pretrain fast mb4"]
    assert "Estimated wall-clock to validation loss 3.39" in table.read_text()
    assert "The fast recipe (Muon, QK-norm, ReLU squared)" in table.read_text()
    assert (repo / "docs" / "benchmarks.md").read_bytes() == docs
    assert not (tmp_path / "shared").exists()


def gpu_suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", REPO / "benchmarks" / "gpu_suite.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("dry_run", "data", "expected"),
    [
        (True, None, str(REPO / "lightning_gpt/sample_data/Salesforce/wikitext")),  # a dry run: the sample
        (False, None, "Salesforce/wikitext"),  # a real run: the hub
        (False, "/data/hub", "/data/hub/Salesforce/wikitext"),  # --data DIR, for a GPU machine without the hub
        (True, "/data/hub", "/data/hub/Salesforce/wikitext"),
    ],
)
def test_where_the_suite_reads_its_data(dry_run, data, expected):
    suite = gpu_suite()
    commands = suite.stage_commands(argparse.Namespace(dry_run=dry_run, data_root=data))
    pretrain = next(command for name, command in commands.items() if name.startswith("pretrain"))
    assert pretrain[pretrain.index("--data-path") + 1] == expected
    assert Path(suite.data_paths(argparse.Namespace(dry_run=True, data_root=None))["sft"]).is_dir()


def test_the_time_to_3_39_of_each_recipe_is_its_tokens_over_its_tokens_per_second():
    suite = gpu_suite()
    row = {"ratio": 1.0, "micro_batch": 16, "accumulate": 4, "precision": "bf16-mixed"}
    results = {
        "pretrain mb16": {**row, "lightning_tokens_per_s": 400_000.0},
        "pretrain mb32": {**row, "lightning_tokens_per_s": 500_000.0},  # the best of the current recipe's
        "pretrain fast mb32": {**row, "lightning_tokens_per_s": 600_000.0},  # faster, and still never "best"
    }
    text = suite.table(results, "GPU", dry_run=False)
    current_hours = 12_000 * 64 * 1024 / 500_000 / 3600  # by hand: the config's steps x windows x block size
    fast_hours = 12_000 * 64 * 1024 * 0.31 / 600_000 / 3600
    assert f"{current_hours:.2f} h." in text and f"{fast_hours:.2f} h ({fast_hours / current_hours:.2f}x" in text
    assert [line for line in text.splitlines() if "(best)" in line][0].startswith("| pretrain mb32 ")


@pytest.mark.parametrize("here", [pytest.param(False, marks=pytest.mark.slow), True])  # False starts processes
def test_a_stage_gives_its_json_or_none_when_it_fails(here, tmp_path):
    # A real GPU run starts each stage as a process (run_stage), a dry run runs it in the suite's (run_stage_here).
    suite = gpu_suite()
    run = suite.run_stage_here if here else suite.run_stage
    good = tmp_path / "good.py"
    good.write_text(
        "import json, sys\nout = sys.argv[sys.argv.index('--json') + 1]\njson.dump({'tokens_per_s': 7}, open(out, 'w'))"
    )
    bad = tmp_path / "bad.py"
    bad.write_text("raise SystemExit('broken')")
    raising = tmp_path / "raising.py"
    raising.write_text("raise RuntimeError('broken')")
    assert run("good one", [str(good)], tmp_path) == {"tokens_per_s": 7}
    assert run("bad one", [str(bad)], tmp_path) is None
    assert run("raising one", [str(raising)], tmp_path) is None
