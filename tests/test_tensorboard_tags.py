"""The TensorBoard tags docs/training.md promises (the README links there) are written: each stage's smoke config,
run briefly on the built-in sample, writes every tag the row names for it, and no tag the row does not name."""

from __future__ import annotations

import re
from fnmatch import fnmatch
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_gpt.cli import run

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
# Few steps, every step logged (the throughput rates need 5 log points), two validations of one batch.
SHORT = ["--trainer.max_steps", "6", "--trainer.log_every_n_steps", "1", "--trainer.val_check_interval", "3"]
SHORT += ["--trainer.limit_val_batches", "1"]
SECTIONS = {  # how the row's sentences begin: which stages they speak of
    "every": "Every stage writes",
    "lm": "Pretraining and SFT add",
    "dpo": "DPO adds",
    "reward": "The reward model adds",
}


def readme_promises() -> dict[str, list[str]]:
    """The tags (or `*` patterns) each sentence of the TensorBoard section of docs/training.md (where the README's
    `tensorboard --logdir runs` row points) names."""
    page = (REPO / "docs" / "training.md").read_text()
    row = next(line for line in page.splitlines() if line.startswith("`tensorboard --logdir runs` shows"))
    starts = sorted((row.index(text), key) for key, text in SECTIONS.items())
    promises = {}
    for (start, key), (end, _) in zip(starts, [*starts[1:], (row.index("Text samples"), None)], strict=True):
        sentence = row[start:end]
        tags = [
            t for t in re.findall(r"`([a-z_]+(?:/[a-z_*]+)*)`", sentence) if "/" in t or t in ("tokens_seen", "epoch")
        ]
        if "each of them with `/val`" in sentence:
            tags += [t.removesuffix("/train") + "/val" for t in tags if t.endswith("/train")]
        promises[key] = tags
    return promises


def written_tags(folder: Path) -> set[str]:
    tags: set[str] = set()
    for events in folder.glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        tags.update(accumulator.Tags()["scalars"])
    return tags


def check(tags: set[str], promised: list[str], stage: str) -> None:
    for promise in promised:
        if promise == "train/device/mfu" and not torch.cuda.is_available():
            continue  # "(on a GPU)": the peak FLOP/s of a CPU is unknown
        assert any(fnmatch(tag, promise) for tag in tags), f"{stage}: README promises {promise}, not written"


@pytest.mark.slow
def test_every_stage_writes_the_tags_the_readme_promises(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    promises = readme_promises()
    assert promises["every"] and promises["lm"] and promises["dpo"] and promises["reward"]
    # Smaller than smoke.yaml: 2 windows a batch, and a 300-token BPE that every later stage takes from its init_from
    # (GPT-2's vocabulary makes the head most of a tiny model's time). Tags, not sizes, are what it reads.
    smoke = ["-c", str(CONFIGS / "smoke.yaml"), *SHORT, "--data.batch_size", "2", "--data.eval_batch_size", "2"]
    last = "runs/{}/smoke/checkpoints/last.ckpt"
    stages = [
        ("pretrain_wikitext103", "lm", ["--data.tokenizer", "bpe-300"]),
        # The sample's one held-out conversation is too long for the smoke context in BPE-300 tokens: hold out more.
        (
            "sft_ultrachat",
            "lm",
            ["--model.init_from", last.format("pretrain_wikitext103"), "--data.val_fraction", "0.1"],
        ),
        ("reward_ultrafeedback", "reward", ["--model.init_from", last.format("sft_ultrachat")]),
        (
            "dpo_ultrafeedback",
            "dpo",
            ["--model.init_from", last.format("sft_ultrachat")]
            + ["--trainer.callbacks.reward_ckpt", last.format("reward_ultrafeedback")]
            + ["--trainer.callbacks.max_new_tokens", "8"],
        ),
    ]
    for config, section, extra in stages:
        run(["fit", "-c", str(CONFIGS / f"{config}.yaml"), *smoke, *extra])
        tags = written_tags(tmp_path / "runs" / config / "smoke")
        named = promises["every"] + promises[section]
        check(tags, named, config)
        unnamed = sorted(tag for tag in tags if not any(fnmatch(tag, promise) for promise in named))
        assert not unnamed, f"{config} writes tags the README does not name: {unnamed}"
