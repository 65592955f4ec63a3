"""Your own text: TextFiles over a folder or glob of .txt/.md/.jsonl files or a hub dataset, and its errors."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from data_modules import TextFiles
from lightning_gpt.cli import run
from lightning_gpt.errors import UserInputError
from tests.conftest import text_documents, text_folder, write_hub_folder

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
EOT = "<|endoftext|>"


def ready(path, **kwargs) -> TextFiles:
    dm = TextFiles(path=str(path), **{"block_size": 16, "batch_size": 2, "num_workers": 0, **kwargs})
    dm.prepare_data()
    dm.setup("fit")
    return dm


def decoded_documents(dm: TextFiles, role: str) -> list[str]:
    text = dm.tokenizer.decode(np.asarray(dm.tokens(role)).tolist())
    assert text.endswith(EOT)
    return text.split(EOT)[:-1]


def test_txt_md_and_jsonl_files_become_one_stream_with_line_breaks_kept(tmp_path):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("First line.\n\nSecond paragraph,\n  indented.\n")
    (folder / "sub" / "b.md").write_text("# Title\n\n- item one\n- item two\n")
    (folder / "empty.txt").write_text("")  # no document
    (folder / "skip.py").write_text("print('not text data')\n")  # not a text file
    lines = [{"text": "json doc\nwith a break", "id": 1}, {"text": "last doc", "id": 2}]
    (folder / "c.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    documents = [
        "First line.\n\nSecond paragraph,\n  indented.\n",
        "# Title\n\n- item one\n- item two\n",
        "json doc\nwith a break",
        "last doc",
    ]
    dm = ready(folder, block_size=4, val_fraction=0.25)  # 4 documents x 0.25 >= 1: whole documents held out
    train, val = decoded_documents(dm, "train"), decoded_documents(dm, "val")
    assert 1 <= len(val) < len(documents)
    assert train == [d for d in documents if d not in val]  # in order, one end-of-text after each
    batch = next(iter(dm.train_dataloader()))
    x, y = batch.inputs, batch.targets
    stream = np.asarray(dm.tokens("train")).tolist()
    window = x[0].tolist()
    assert any(stream[i : i + len(window)] == window for i in range(len(stream)))  # windows over that stream
    assert y[0, :-1].tolist() == window[1:]


def test_the_holdout_is_stable_and_never_trained_on(tmp_path):
    first = ready(text_folder(tmp_path / "a", n=40), val_fraction=0.2)
    # The same documents under other file names and in another order, with a fresh cache: the same held-out part.
    renamed = tmp_path / "b"
    for i, text in enumerate(reversed(text_documents(40))):
        (renamed / f"{i:02d}").mkdir(parents=True)
        (renamed / f"{i:02d}" / "file.txt").write_text(text)
    second = ready(renamed, val_fraction=0.2, cache_dir=str(tmp_path / "cache2"))
    val, train = set(decoded_documents(first, "val")), set(decoded_documents(first, "train"))
    assert 1 < len(val) < 20 and not val & train and val | train == set(text_documents(40))
    assert set(decoded_documents(second, "val")) == val
    assert first.splits == {"train": "train", "val": "train", "test": "train"} and first.holds_out
    first.setup("test")
    assert set(decoded_documents(first, "test")) == val  # local files: test on the held-out documents


def test_a_glob_picks_its_files_only(tmp_path):
    folder = text_folder(tmp_path / "corpus", n=12)
    dm = ready(f"{folder}/**/*.md")  # 6 documents at val_fraction 0.01: the tail of the stream validates
    stream = np.concatenate([np.asarray(dm.tokens("train")), np.asarray(dm.tokens("val"))]).tolist()
    documents = dm.tokenizer.decode(stream).split(EOT)[:-1]
    assert sorted(documents) == sorted(text_documents(12)[1::2])  # the odd documents are the .md files


def test_a_hub_dataset_validates_on_its_own_validation_split(tmp_path):
    docs = text_documents(10, seed=4)
    folder = write_hub_folder(
        tmp_path / "hub",
        {"train": [{"body": d} for d in docs[:8]], "validation": [{"body": d} for d in docs[8:]]},
        config="default",
    )
    dm = ready(folder, text_column="body")
    assert dm.splits == {"train": "train", "val": "validation", "test": "validation"} and not dm.holds_out
    assert decoded_documents(dm, "train") == docs[:8] and decoded_documents(dm, "val") == docs[8:]


def _jsonl_without_the_column(root: Path) -> str:
    root.mkdir()
    (root / "a.jsonl").write_text('{"content": "hello"}\n{"content": "world"}\n')
    return str(root)


def _only_empty_files(root: Path) -> str:
    root.mkdir()
    (root / "a.txt").write_text("")
    (root / "b.md").write_text("\n  \n")
    return str(root)


def _no_text_files(root: Path) -> str:
    root.mkdir()
    (root / "notes.py").write_text("x = 1\n")
    return str(root)


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda root: str(root / "missing"), "--data.path"),
        (lambda root: str(root / "*.txt"), "--data.path"),  # a glob that matches nothing
        (_no_text_files, "--data.path"),
        (_jsonl_without_the_column, "--data.text_column"),
        (_only_empty_files, "--data.text_column"),
    ],
    ids=["missing", "empty-glob", "no-text-files", "jsonl-without-column", "empty-corpus"],
)
def test_unusable_sources_fail_with_one_clear_error(make, named, tmp_path):
    path = make(tmp_path / "data")
    with pytest.raises(UserInputError, match=named) as err:
        ready(path)
    assert "--data.path" in str(err.value)


@pytest.mark.slow
def test_a_fit_on_a_folder_of_text_files_through_the_cli(tmp_path, monkeypatch):
    folder = text_folder(tmp_path / "corpus", n=30)
    monkeypatch.chdir(tmp_path)
    cli = run(
        [
            *("fit", "-c", str(CONFIGS / "pretrain_text.yaml"), "-c", str(CONFIGS / "smoke.yaml")),
            *("--data.path", str(folder), "--trainer.max_steps", "4", "--trainer.val_check_interval", "2"),
            *("--trainer.limit_val_batches", "2"),
        ]
    )
    assert cli.trainer.global_step == 4
    assert np.isfinite(cli.trainer.callback_metrics["val_loss"].item())
    assert (tmp_path / "runs" / "pretrain_text" / "smoke" / "checkpoints" / "last.ckpt").is_file()
    shutil.rmtree(tmp_path / "runs")
