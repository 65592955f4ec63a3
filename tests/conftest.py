"""Shared fixtures: every test runs offline, on the CPU, with its own caches, on data it makes itself."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

REAL_HUB = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hub"

WORDS = [
    *("the", "cat", "dog", "sat", "ran", "on", "under", "a", "mat", "rug"),
    *("big", "small", "red", "blue", "and", "then", "slept", "ate", "fish"),
]


@pytest.fixture(autouse=True)
def _offline_and_isolated(tmp_path_factory, monkeypatch):
    hf = tmp_path_factory.mktemp("hf")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(hf))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(hf / "datasets"))
    monkeypatch.setenv("LIGHTNING_GPT_CACHE", str(tmp_path_factory.mktemp("lgcache")))
    torch.manual_seed(0)


def synthetic_articles(n_articles: int, sentences: int = 12, seed: int = 0) -> list[list[str]]:
    """WikiText-style articles as line rows: a title row, then text rows, blank rows between."""
    rng = random.Random(seed)
    articles = []
    for i in range(n_articles):
        rows = ["", f" = Article {i} = \n", ""]
        for _ in range(sentences):
            rows.append(" " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) + " . \n")
            rows.append("")
        articles.append(rows)
    return articles


def write_hub_folder(root: Path, splits: dict[str, list[dict]], config: str = "wikitext-103-raw-v1") -> Path:
    """A local dataset folder in the Hugging Face hub's layout: <config>/<split>-00000-of-00001.parquet plus a
    README.md whose YAML header declares the config and its data files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / config).mkdir(parents=True, exist_ok=True)
    files = []
    for split, rows in splits.items():
        pq.write_table(pa.Table.from_pylist(rows), root / config / f"{split}-00000-of-00001.parquet")
        files.append(f"  - split: {split}\n    path: {config}/{split}-*")
    (root / "README.md").write_text(
        f"---\nconfigs:\n- config_name: {config}\n  data_files:\n" + "\n".join(files) + "\n---\n"
    )
    return root


def wikitext_rows(articles: list[list[str]]) -> list[dict]:
    return [{"text": line} for rows in articles for line in rows]


def wikitext_folder(root: Path) -> Path:
    """A small WikiText-like folder: 40 training articles, 6 validation and 6 test articles."""
    return write_hub_folder(
        root,
        {
            "train": wikitext_rows(synthetic_articles(40, seed=1)),
            "validation": wikitext_rows(synthetic_articles(6, seed=2)),
            "test": wikitext_rows(synthetic_articles(6, seed=3)),
        },
    )


@pytest.fixture
def wikitext_dir(tmp_path) -> Path:
    return wikitext_folder(tmp_path / "wikitext")


def synthetic_conversations(n: int, seed: int = 0, turns: int = 2, system: bool = False) -> list[dict]:
    """UltraChat-style rows: prompt, prompt_id and messages alternating user/assistant."""
    rng = random.Random(seed)

    def sentence(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k)).capitalize() + "."

    rows = []
    for i in range(n):
        messages = [{"role": "system", "content": "Be brief."}] if system else []
        for _ in range(turns):
            messages.append({"role": "user", "content": sentence(rng.randint(4, 9))})
            messages.append({"role": "assistant", "content": sentence(rng.randint(5, 12))})
        user_turns = [m for m in messages if m["role"] == "user"]
        rows.append({"prompt": user_turns[0]["content"], "prompt_id": str(i), "messages": messages})
    return rows


@pytest.fixture
def ultrachat_dir(tmp_path) -> Path:
    """A small UltraChat-like folder: 120 training and 24 test conversations."""
    return write_hub_folder(
        tmp_path / "ultrachat",
        {"train_sft": synthetic_conversations(120, seed=1), "test_sft": synthetic_conversations(24, seed=2)},
        config="default",
    )


def text_documents(n: int, seed: int = 0, paragraphs: int = 3) -> list[str]:
    """Plain-text documents of a few paragraphs each, line breaks and blank lines inside."""
    rng = random.Random(seed)
    return [
        f"# Note {i}\n\n"
        + "\n\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 20))) + "." for _ in range(paragraphs))
        + "\n"
        for i in range(n)
    ]


def text_folder(root: Path, n: int = 30, seed: int = 0) -> Path:
    """A folder of your own text: one .txt or .md file per document (in a subfolder for some)."""
    for i, text in enumerate(text_documents(n, seed)):
        file = root / ("sub" if i % 3 == 0 else "") / f"doc{i:03d}.{'md' if i % 2 else 'txt'}"
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(text)
    return root


def save_module(module, path) -> str:
    """What a checkpoint of `lightning-gpt fit` holds and what loading it reads: the weights and the settings."""
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return str(path)


def squad_rows(n_articles: int, seed: int = 0, questions: int = 3) -> list[dict]:
    """SQuAD-style rows: a passage per article of made-up words, each asked `questions` questions whose answer is
    a word planted in it."""
    rng = random.Random(seed)
    rows = []
    for a in range(n_articles):
        answers = [f"answer{a}x{q}" for q in range(questions)]
        words = [rng.choice(WORDS) for _ in range(40)] + [f"the key {q} is {w}" for q, w in enumerate(answers)]
        context = " ".join(words) + "."
        for q, answer in enumerate(answers):
            start = context.index(answer)
            rows.append(
                {
                    "id": f"{a}-{q}",
                    "title": f"Article {a}",
                    "context": context,
                    "question": f"What is the key {q} of article {a}?",
                    "answers": {"text": [answer], "answer_start": [start]},
                }
            )
    return rows


def squad_folder(root: Path) -> Path:
    return write_hub_folder(
        root, {"train": squad_rows(20, seed=1), "validation": squad_rows(4, seed=2)}, config="plain_text"
    )


def command(name: str, argv: list[str], **kwargs):
    """Runs `lightning-gpt NAME ARGV...` in this process, as the console script does (its argument parser, then the
    command), and returns what the command returns; keyword arguments go to its run (e.g. chat's `lines`)."""
    from lightning_gpt.__main__ import command_parser

    module, parser = command_parser(name)
    return module.run(parser.parse_args(argv), **kwargs)


# --- builders of the optimizer and model-variant tests (tests/test_muon.py) ------------------------------------------


def tiny_wikitext_data(path, **overrides):
    """The WikiText DataModule over a folder made by `wikitext_folder`: 16-token windows, 4 a batch, no workers."""
    from data_modules import WikiText103

    return WikiText103(path=str(path), **{"block_size": 16, "batch_size": 4, "num_workers": 0, "seed": 7, **overrides})


def tiny_language_model(dm, **overrides):
    """A one-layer, 32-wide GPTModule for `dm`'s vocabulary and windows."""
    from lightning_gpt.training.language_model import GPTModule

    args = {"preset": "tiny", "vocab_size": dm.vocab_size, "block_size": dm.block_size, "n_layer": 1, "n_embd": 32,
            "learning_rate": 1e-2, "warmup_steps": 2}  # fmt: skip
    return GPTModule(**{**args, **overrides})


def quiet_cpu_trainer(root, max_steps: int, callbacks=(), **overrides):
    """A CPU Trainer without logger, progress bar, summary, checkpoints or validation, unless overridden."""
    import lightning as L

    args = {"accelerator": "cpu", "devices": 1, "max_steps": max_steps, "logger": False, "enable_progress_bar": False,
            "enable_model_summary": False, "enable_checkpointing": False, "num_sanity_val_steps": 0,
            "limit_val_batches": 0, "default_root_dir": root}  # fmt: skip
    return L.Trainer(**{**args, **overrides}, callbacks=list(callbacks))
