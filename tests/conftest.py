"""Shared fixtures and builders: every test runs offline, on the CPU, with its own caches, on data it makes itself.

The builders here are the only code tests share: no test module imports another. Sections: the environment, paths,
data folders, DataModules, modules and Trainers, the command line, TensorBoard, and the checkpoints several test
files read (built once per session).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

# Offline before any test module is collected: huggingface_hub and datasets read these when first imported, and a
# module importing them at the top (test_hf_loading.py) would otherwise leave them trying the hub, 24 s of retries.
os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from lightning_gpt.chat import chat_tokenizer  # noqa: E402

# Under pytest-xdist (`-n auto`), the workers share the cores: each takes its share of threads, and so do the
# processes its tests start (OMP_NUM_THREADS), instead of every one of them claiming every core.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _THREADS = max(1, (os.cpu_count() or 1) // _WORKERS)
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)
    torch.set_num_threads(_THREADS)


def pytest_collection_modifyitems(config, items):
    """The slow tests first, in their order, then the rest: under `-n auto` the longest ones start at once and the
    short ones fill the workers' gaps, instead of the longest (the top-level files, collected last) making a tail."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


# --- paths --------------------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
PRETRAIN = str(CONFIGS / "pretrain_wikitext103.yaml")
SFT = str(CONFIGS / "sft_ultrachat.yaml")
SMOKE = str(CONFIGS / "smoke.yaml")
DPO = str(CONFIGS / "dpo_ultrafeedback.yaml")
REWARD = str(CONFIGS / "reward_ultrafeedback.yaml")
REAL_HUB = REPO.parent / "shared" / "data" / "hub"


# --- the environment ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def _offline_session(tmp_path_factory):
    """The session fixtures (checkpoints trained once) run offline and away from the user's caches too."""
    with pytest.MonkeyPatch.context() as patch:
        hf = tmp_path_factory.mktemp("hf-session")
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("HF_DATASETS_OFFLINE", "1")
        patch.setenv("HF_HOME", str(hf))
        patch.setenv("HF_DATASETS_CACHE", str(hf / "datasets"))
        patch.setenv("LIGHTNING_GPT_CACHE", str(tmp_path_factory.mktemp("lgcache-session")))
        yield


@pytest.fixture(autouse=True)
def _offline_and_isolated(tmp_path_factory, monkeypatch):
    hf = tmp_path_factory.mktemp("hf")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(hf))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(hf / "datasets"))
    monkeypatch.setenv("LIGHTNING_GPT_CACHE", str(tmp_path_factory.mktemp("lgcache")))
    torch.manual_seed(0)


# --- data folders -------------------------------------------------------------------------------------------------

WORDS = [
    *("the", "cat", "dog", "sat", "ran", "on", "under", "a", "mat", "rug"),
    *("big", "small", "red", "blue", "and", "then", "slept", "ate", "fish"),
]


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


def sentence(rng: random.Random, k: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(k)).capitalize() + "."


def turn(role: str, content) -> dict:
    return {"role": role, "content": content}


def pair_row(prompt_id: str, prompt: list[dict], chosen: str, rejected: str, scores=(8.0, 5.0)) -> dict:
    return {
        "prompt": prompt[-1]["content"],
        "prompt_id": prompt_id,
        "chosen": [*prompt, turn("assistant", chosen)],
        "rejected": [*prompt, turn("assistant", rejected)],
        "messages": [*prompt, turn("assistant", chosen)],
        "score_chosen": float(scores[0]),
        "score_rejected": float(scores[1]),
    }


def preference_rows(n: int, seed: int = 0, ties_every: int = 0, system: bool = False) -> list[dict]:
    """UltraFeedback-style rows: one user turn (after a system turn if asked), two different answers, scores; every
    `ties_every`-th row a tie."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        prompt = [turn("system", "Be brief.")] if system else []
        prompt.append(turn("user", sentence(rng, rng.randint(4, 9))))
        chosen, rejected = sentence(rng, rng.randint(3, 10)), sentence(rng, rng.randint(3, 10))
        rejected = rejected if rejected != chosen else rejected + " No."
        score = rng.randint(6, 10)
        tie = ties_every and i % ties_every == 0
        rows.append(pair_row(f"{seed}-{i}", prompt, chosen, rejected, (score, score if tie else score - 2)))
    return rows


def preference_folder(root, train: list[dict], test: list[dict] | None = None):
    """An UltraFeedback-like folder: the rows as train_prefs, and as test_prefs `test` (else the first 8)."""
    return write_hub_folder(root, {"train_prefs": train, "test_prefs": test or train[:8]}, config="default")


def unicode_corpus(folder: Path) -> Path:
    """24 text files mixing Latin, Cyrillic, CJK and emoji: corpora for trained tokenizers."""
    folder.mkdir()
    for i in range(24):
        (folder / f"doc{i}.txt").write_text(f"Document {i}: Привет, мир! 你好 😀. " * 12, encoding="utf-8")
    return folder


FACT = "The keeper of the northern lighthouse hides the spare key under the green barrel."

QUESTION = "Where does the lighthouse keeper hide the spare key?"


def filler(words: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(rng.choice(WORDS, words)) + "."


def planted_folder(root):
    """30 notes of made-up words, and one file of several chunks where one paragraph holds FACT."""
    text_folder(root)
    paragraphs = [filler(50, seed) for seed in range(6)]
    paragraphs[4] = FACT
    (root / "facts").mkdir()
    (root / "facts" / "lighthouse.txt").write_text("\n\n".join(paragraphs) + "\n")
    return root


# --- benchmark data (lightning-gpt evaluate) --------------------------------------------------------------------------


def write_hub_configs(root: Path, configs: dict[str, dict[str, list[dict]]]) -> Path:
    """A dataset folder in the hub's layout with several configs: <config>/<split>-00000-of-00001.parquet each, and
    a README.md whose YAML header declares them all (as nyu-mll/blimp declares its paradigms)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    header = ["---", "configs:"]
    for config, splits in configs.items():
        (root / config).mkdir(parents=True, exist_ok=True)
        header += [f"- config_name: {config}", "  data_files:"]
        for split, rows in splits.items():
            pq.write_table(pa.Table.from_pylist(rows), root / config / f"{split}-00000-of-00001.parquet")
            header += [f"  - split: {split}", f"    path: {config}/{split}-*"]
    (root / "README.md").write_text("\n".join([*header, "---", ""]))
    return root


def benchmark_rows(task: str, n: int, seed: int = 0) -> list[dict]:
    """Rows in the columns of lm-evaluation-harness's datasets, made of WORDS: a few items per task."""
    rng = random.Random(seed)

    def words(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k))

    rows = []
    for i in range(n):
        if task == "blimp":
            good = words(rng.randint(4, 8))
            bad = " ".join(reversed(good.split()))
            rows.append({"sentence_good": good.capitalize() + ".", "sentence_bad": bad.capitalize() + ".",
                         "pair_id": i})  # fmt: skip
        elif task == "hellaswag":
            rows.append({"ind": i, "activity_label": "Pets", "ctx_a": words(8) + ".", "ctx_b": words(2),
                         "ctx": "", "endings": [words(rng.randint(2, 6)) for _ in range(4)], "source_id": str(i),
                         "split": "val", "split_type": "indomain", "label": str(rng.randrange(4))})  # fmt: skip
        elif task == "arc_easy":
            k = rng.choice([3, 4])
            labels = ["A", "B", "C", "D"][:k]
            rows.append({"id": str(i), "question": words(6) + "?", "answerKey": rng.choice(labels),
                         "choices": {"text": [words(rng.randint(1, 4)) for _ in labels], "label": labels}})  # fmt: skip
        elif task == "piqa":
            rows.append({"goal": words(6), "sol1": words(5), "sol2": words(7), "label": rng.randrange(2)})
        elif task == "winogrande":
            rows.append({"sentence": f"The {words(3)} _ {words(4)}.", "option1": "cat", "option2": "dog",
                         "answer": rng.choice(["1", "2"])})  # fmt: skip
        elif task == "lambada_openai":
            rows.append({"text": words(rng.randint(20, 40))})
        elif task == "wikitext":
            rows.append({"page": " = Page = \n " + " . ".join(words(12) for _ in range(rng.randint(4, 8))) + " . \n"})
    return rows


def benchmark_mirror(root: Path, n: int = 6) -> Path:
    """A mirror of the hub (ROOT/<dataset id>) holding the datasets of lightning-gpt evaluate's tasks, a few items
    each, under the configs and splits the harness reads (the scored one, and the validation split it also opens
    where a test split is scored): BLiMP with two paradigms."""
    blimp = {name: {"train": benchmark_rows("blimp", n, seed)} for seed, name in enumerate(["causative", "passive_1"])}
    write_hub_configs(root / "nyu-mll" / "blimp", blimp)
    write_hub_configs(root / "Rowan" / "hellaswag", {"default": {"validation": benchmark_rows("hellaswag", n)}})
    arc = {"ARC-Easy": {"validation": benchmark_rows("arc_easy", 2, seed=1), "test": benchmark_rows("arc_easy", n)}}
    write_hub_configs(root / "allenai" / "ai2_arc", arc)
    write_hub_configs(root / "baber" / "piqa", {"default": {"validation": benchmark_rows("piqa", n)}})
    write_hub_configs(root / "allenai" / "winogrande",
                      {"winogrande_xl": {"validation": benchmark_rows("winogrande", n)}})  # fmt: skip
    lambada = {"default": {"test": benchmark_rows("lambada_openai", n)}}
    write_hub_configs(root / "EleutherAI" / "lambada_openai", lambada)
    write_hub_configs(root / "EleutherAI" / "wikitext_document_level",
                      {"wikitext-2-raw-v1": {"validation": benchmark_rows("wikitext", 2, seed=1),
                                             "test": benchmark_rows("wikitext", n)}})  # fmt: skip
    return root


# --- DataModules ---------------------------------------------------------------------------------------------------


def wikitext_data(path, **overrides):
    """WikiText103 over a made-up folder: windows of 16 tokens, batches of 4, no worker processes."""
    from data_modules import WikiText103

    return WikiText103(path=str(path), **{"block_size": 16, "batch_size": 4, "num_workers": 0, "seed": 7, **overrides})


def chat_data(path, **overrides):
    """UltraChat200k over a made-up folder: 64-token conversations, batches of 8."""
    from data_modules import UltraChat200k

    args = {"block_size": 64, "batch_size": 8, "eval_batch_size": 8, "num_workers": 0, "seed": 5}
    return UltraChat200k(path=str(path), **{**args, **overrides})


def pref_data(path, **overrides):
    """UltraFeedback over a made-up folder: 64-token pairs, batches of 4 pairs."""
    from data_modules import UltraFeedback

    args = {"block_size": 64, "batch_size": 4, "eval_batch_size": 4, "num_workers": 0, "seed": 5}
    return UltraFeedback(path=str(path), **{**args, **overrides})


# --- modules and Trainers ------------------------------------------------------------------------------------------


def tiny_module(dm, **overrides):
    """A one-layer GPTModule for the DataModule's vocabulary and context."""
    from lightning_gpt.training.language_model import GPTModule

    args = {
        "preset": "tiny",
        "vocab_size": dm.vocab_size,
        "block_size": dm.block_size,
        "n_layer": 1,
        "n_embd": 32,
        "learning_rate": 1e-2,
        "warmup_steps": 2,
    }
    return GPTModule(**{**args, **overrides})


def trainer(tmp_path, max_steps, callbacks=(), **overrides) -> L.Trainer:
    """A quiet CPU Trainer: no logger, progress bar, checkpoints or validation unless asked."""
    args = {
        "accelerator": "cpu",
        "devices": 1,
        "max_steps": max_steps,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 0,
        "default_root_dir": tmp_path,
    }
    return L.Trainer(**{**args, **overrides}, callbacks=list(callbacks))


class LossRecorder(L.Callback):
    """The loss of every training batch, in order."""

    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


class StopAt(L.Callback):
    """Ends a run after `step` optimizer steps, like a crash would (the schedule still plans for max_steps)."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        trainer.should_stop = trainer.global_step >= self.step


# A tiny chat model's settings: GPT-2's vocabulary plus the 4 chat tokens.
TINY_CHAT = {"preset": "tiny", "vocab_size": chat_tokenizer().vocab_size, "block_size": 64, "n_layer": 1, "n_embd": 32}


def conversation_texts(folder: Path, split: str = "train_sft") -> list[str]:
    """Every message's text of a hub-layout chat folder's split."""
    import datasets

    rows = datasets.load_dataset(str(folder), split=split)
    return [message["content"] for row in rows for message in row["messages"]]


def bpe_tokenizer_checkpoint(texts: list[str], path: Path) -> str:
    """What a chat stage reads of a pretraining checkpoint that trained a 300-token BPE on `texts`: its tokenizer and
    vocabulary (for --data.tokenizer: a small head, where GPT-2's 50k rows would be most of a tiny model's time)."""
    from lightning_gpt.tokenizer import train_tokenizer

    bpe = train_tokenizer("bpe-300", texts)
    torch.save({"hyper_parameters": {"vocab_size": bpe.vocab_size}, "tokenizer": bpe.to_data()}, path)
    return str(path)


def save_module(module, path, tokenizer=None) -> str:
    """What a checkpoint of `lightning-gpt fit` holds and what loading it reads: the weights and the settings, and
    the tokenizer when it is not GPT-2's (fit stores every tokenizer; a checkpoint without one reads as GPT-2's)."""
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    if tokenizer is not None:
        checkpoint["tokenizer"] = tokenizer.to_data()
    torch.save(checkpoint, path)
    return str(path)


# --- the command line ----------------------------------------------------------------------------------------------


def command(name: str, argv: list[str], **kwargs):
    """Runs `lightning-gpt NAME ARGV...` in this process, as the console script does (its argument parser, then the
    command), and returns what the command returns; keyword arguments go to its run (e.g. chat's `lines`)."""
    from lightning_gpt.__main__ import command_parser

    module, parser = command_parser(name)
    return module.run(parser.parse_args(argv), **kwargs)


def run_main(monkeypatch, capsys, *argv) -> str:
    """Runs `lightning-gpt ARGV...` through the console script's main() and returns what it printed."""
    from lightning_gpt.__main__ import main

    monkeypatch.setattr(sys, "argv", ["lightning-gpt", *argv])
    main()
    return capsys.readouterr().out


def parse_only(args):
    """The LightningCLI built from `args` without running anything, its model's weights on the meta device (settings
    only: a gpt2-124m takes 2 s to initialise on a CPU); a user error fails the test with its message."""
    from lightning_gpt.cli import build_cli
    from lightning_gpt.errors import UserInputError

    try:
        with torch.device("meta"):
            return build_cli(args, run=False)
    except UserInputError as err:  # run() turns these into one line and exit code 2
        pytest.fail(str(err))


# --- serving -------------------------------------------------------------------------------------------------------

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Red."},
    {"role": "user", "content": "Another one?"},
]


def serving_checkpoints(root: Path, kinds=("chat", "plain", "docs")) -> dict[str, str]:
    """Tiny random models for `serve` and `web`, saved as fit saves them: {kind: path}. "chat" (64-token context) and
    "docs" (96 tokens: room for passages) have the chat vocabulary, "plain" GPT-2's. Built in this order from one
    seed, so a kind has the same weights whichever others are asked for."""
    from lightning_gpt.training.language_model import GPTModule

    torch.manual_seed(0)
    shapes = {
        "chat": (chat_tokenizer().vocab_size, 64),
        "plain": (50257, 64),
        "docs": (chat_tokenizer().vocab_size, 96),
    }
    paths = {}
    for kind in [k for k in shapes if k in kinds]:
        vocab, block_size = shapes[kind]
        module = GPTModule(preset="tiny", vocab_size=vocab, block_size=block_size, n_layer=1, n_embd=32)
        with torch.no_grad():  # at the usual small init, greedy decoding repeats the last token whatever the prompt
            for name, weight in module.named_parameters():
                if weight.dim() == 2 and "emb" not in name:
                    weight.normal_(0, 0.2)
        paths[kind] = save_module(module, root / f"{kind}.ckpt")
    return paths


def write_docs(folder: Path) -> Path:
    """Three documents about a spare key; the log is the best match and too long to fit the context whole."""
    folder.mkdir()
    (folder / "keys.md").write_text("The spare key hangs behind the lighthouse door.\n\nRed mats are dry.\n")
    (folder / "stock.csv").write_text("item,shelf\nblue rug,B7\nspare key,C3\n")
    log = " ".join(
        f"Day {i}: the spare key was where it should be, the keeper checked the spare key." for i in range(9)
    )
    (folder / "log.txt").write_text(log + "\n")
    return folder


# --- TensorBoard ---------------------------------------------------------------------------------------------------


def scalars(folder: Path, metric: str) -> dict[int, float]:
    """step -> value of a logged metric in TensorBoard, over every event file in `folder` (a resumed run writes a
    second). Looked up by the tag the project's TensorBoard logger gives the metric (`val_loss` -> `loss/val`)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lightning_gpt.training.tensorboard import tensorboard_tag

    tag, values = tensorboard_tag(metric), {}
    for events in sorted(folder.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            values.update({e.step: e.value for e in accumulator.Scalars(tag)})
    return values


# --- checkpoint files ---------------------------------------------------------------------------------------------


def small_checkpoint(step: int = 0) -> dict:
    """A checkpoint-shaped dict of weights, a step and hyperparameters (with a tuple, as fit writes betas)."""
    return {
        "state_dict": {"model.w": torch.arange(1000, dtype=torch.float32) + step, "model.b": torch.zeros(3, 3)},
        "global_step": step,
        "hyper_parameters": {"preset": "tiny", "betas": (0.9, 0.95), "init_from": None},
    }


def temp_files(folder: Path) -> list[str]:
    """The temporary files of unfinished atomic saves in `folder`."""
    return sorted(p.name for p in folder.glob(".*.tmp"))


def dead_pid() -> int:
    """A pid no process has: above the largest that Linux (2**22) or macOS (99,999) hands out. Cheaper than
    starting and reaping a process, and no later process can take it."""
    return 2**22 + 1


def live_temp_file(folder: Path, name: str = "last.ckpt") -> Path:
    """A temp file named as a save of this (live) test process writes it."""
    from lightning_gpt.atomic import HOST

    path = folder / f".{name}.{HOST}-{os.getpid()}.0123abcd.tmp"
    path.write_bytes(b"half a checkpoint")
    return path


# --- checkpoints several test files read, trained once per session ------------------------------------------------


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict:
    """A pretraining and a chat checkpoint of tiny models, trained a few steps on made-up data: {"pretrain",
    "chat" (paths), "chat_data" (the chat folder; its test_sft is synthetic_conversations(12, seed=2))}."""
    from data_modules import UltraChat200k, WikiText103

    torch.manual_seed(0)  # the same weights every run: tests compare generated text (a session fixture runs unseeded)
    root = tmp_path_factory.mktemp("ckpts")
    wiki = wikitext_folder(root / "wiki")
    chat = write_hub_folder(
        root / "chat",
        {"train_sft": synthetic_conversations(60, seed=1), "test_sft": synthetic_conversations(12, seed=2)},
        config="default",
    )
    paths = {"chat_data": str(chat)}
    for name, dm in (
        (
            "pretrain",
            WikiText103(path=str(wiki), block_size=64, batch_size=4, num_workers=0, cache_dir=str(root / "c")),
        ),
        ("chat", UltraChat200k(path=str(chat), block_size=64, batch_size=4, num_workers=0, cache_dir=str(root / "c"))),
    ):
        run = trainer(root / name, 5)
        run.fit(tiny_module(dm), dm)
        run.save_checkpoint(root / f"{name}.ckpt")
        paths[name] = str(root / f"{name}.ckpt")
    return paths


@pytest.fixture(scope="session")
def pretrain_ckpt(tmp_path_factory) -> str:
    """A real pretraining checkpoint: a tiny model fitted for 30 steps on the WikiText-like corpus."""
    torch.manual_seed(0)  # the same weights every run (a session fixture runs unseeded)
    root = tmp_path_factory.mktemp("pretrain")
    folder = wikitext_folder(root / "wikitext")
    from data_modules import WikiText103

    dm = WikiText103(path=str(folder), block_size=64, batch_size=4, num_workers=0, cache_dir=str(root / "cache"))
    run = trainer(root, 30)
    run.fit(tiny_module(dm), dm)
    run.save_checkpoint(root / "pretrain.ckpt")
    return str(root / "pretrain.ckpt")


def repository_copy(dest: Path) -> Path:
    """The tracked files of this checkout (as a fresh clone has them), with uncommitted edits."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in files.decode().split("\0"):
        if name and (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes((REPO / name).read_bytes())
    return dest


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
