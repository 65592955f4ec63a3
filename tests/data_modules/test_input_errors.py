"""Bad data input through the real command line: one line naming the flag or file and the fix, exit code 2."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lightning_gpt.cli import run
from tests.conftest import PRETRAIN, SFT, SMOKE, synthetic_conversations, write_hub_folder

CONFIG = "wikitext-103-raw-v1"


def fails_with(capsys, args: list[str], *expected: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err[-2000:]
    assert "lightning-gpt: error:" in err and "Traceback" not in err, err[-2000:]
    for text in expected:
        assert text in err, err[-2000:]
    return err


def pretrain(data_dir, *extra) -> list[str]:
    return ["fit", "-c", PRETRAIN, "-c", SMOKE, "--data.path", str(data_dir), "--trainer.max_steps", "1", *extra]


def hub_folder_of_files(root, suffix: str, files: dict[str, bytes]):
    """A folder in the hub's layout whose splits are .txt or .json files instead of parquet."""
    (root / CONFIG).mkdir(parents=True)
    for split, data in files.items():
        (root / CONFIG / f"{split}-00000-of-00001.{suffix}").write_bytes(data)
    entries = "".join(f"  - split: {s}\n    path: {CONFIG}/{s}-*\n" for s in files)
    (root / "README.md").write_text(f"---\nconfigs:\n- config_name: {CONFIG}\n  data_files:\n{entries}---\n")
    return root


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--data.init_args.batch_size", "0"),
        ("--data.eval_batch_size", "0"),
        ("--data.eval_batch_size", "-4"),
        ("--data.num_workers", "-1"),
    ],
)
def test_bad_loader_numbers_name_the_flag(flag, value, wikitext_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    named = flag.replace("init_args.", "")
    fails_with(capsys, pretrain(wikitext_dir, flag, value), named, value)


def test_an_empty_validation_split_is_named_not_train(wikitext_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    empty = wikitext_dir / CONFIG / "validation-00000-of-00001.parquet"
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), empty)
    err = fails_with(capsys, pretrain(wikitext_dir), "split 'validation'", empty.name, "has no rows")
    assert "split 'train'" not in err


def test_parquet_text_that_is_not_utf8_names_the_file_and_column(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    lines = [b" = A = \n", b" the cat sat \xff\xfe on the mat . \n"] * 20
    bad = pa.array(lines, pa.binary()).view(pa.string())  # a string column holding invalid bytes
    folder = write_hub_folder(tmp_path / "d", {"train": [{"text": " x \n"}], "validation": [{"text": " v \n"}]})
    pq.write_table(pa.table({"text": bad}), folder / CONFIG / "train-00000-of-00001.parquet")
    fails_with(capsys, pretrain(folder), "train-00000-of-00001.parquet", "'text'", "UTF8")


def test_a_binary_text_column_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    folder = write_hub_folder(tmp_path / "d", {"train": [{"text": b" = A = \n"}], "validation": [{"text": b" v \n"}]})
    fails_with(capsys, pretrain(folder), "column 'text' holds bytes", "--data.text_column")


@pytest.mark.parametrize(
    ("suffix", "train"),
    [
        ("txt", b" = A = \n the cat sat . \n the \xff dog ran . \n"),
        ("json", b'{"text": " = A = \\n"}\n{"text": " the \xff dog ran . \\n"}\n'),
    ],
)
def test_text_files_that_are_not_utf8_name_the_file_and_line(suffix, train, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    valid = b" v \n" if suffix == "txt" else b'{"text": " v \\n"}\n'
    folder = hub_folder_of_files(tmp_path / "d", suffix, {"train": train, "validation": valid})
    fails_with(capsys, pretrain(folder), f"train-00000-of-00001.{suffix}", "not valid UTF-8", "line ")


def test_chat_messages_that_are_not_utf8_name_the_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rows = synthetic_conversations(30, seed=1)
    folder = write_hub_folder(tmp_path / "chat", {"train_sft": rows, "test_sft": rows[:4]}, config="default")
    turns = [turn for row in rows for turn in row["messages"]]
    content = pa.array([t["content"].encode() + b" \xc3\x28" for t in turns], pa.binary()).view(pa.string())
    messages = pa.ListArray.from_arrays(
        pa.array(np.cumsum([0] + [len(row["messages"]) for row in rows]), pa.int32()),
        pa.StructArray.from_arrays([content, pa.array([t["role"] for t in turns])], names=["content", "role"]),
    )
    table = pa.table(
        {"prompt": [r["prompt"] for r in rows], "prompt_id": [r["prompt_id"] for r in rows], "messages": messages}
    )
    pq.write_table(table, folder / "default" / "train_sft-00000-of-00001.parquet")
    args = ["fit", "-c", SFT, "-c", SMOKE, "--data.path", str(folder), "--trainer.max_steps", "1"]
    fails_with(capsys, args, "train_sft-00000-of-00001.parquet", "'messages'", "UTF8")


def test_a_val_fraction_out_of_range_names_the_flag(ultrachat_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["fit", "-c", SFT, "-c", SMOKE, "--data.path", str(ultrachat_dir), "--data.val_fraction", "1.5"]
    fails_with(capsys, args, "--data.val_fraction", "1.5", "--data.val_split")
