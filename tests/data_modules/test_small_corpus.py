"""A small folder of your own text trains with the defaults: three files of about 100 words each, through
configs/pretrain_text.yaml and the smoke override. Too few documents for --data.val_fraction: validation is the
tail of the token stream; an unavoidable error gives the numbers and a setting that works, before training."""

import logging
import math
import random
from pathlib import Path

import numpy as np
import pytest

from data_modules import TextFiles
from lightning_gpt.cli import run
from lightning_gpt.tokenizer import Tokenizer
from tests.conftest import WORDS

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def three_files(root: Path, words: int = 100) -> list[str]:
    """Three short documents of `words` words, as three files (read in name order)."""
    rng = random.Random(7)
    root.mkdir(parents=True)
    texts = []
    for i in range(3):
        text = " ".join(rng.choice(WORDS) for _ in range(words)) + ".\n"
        (root / f"part{i}.txt").write_text(text)
        texts.append(text)
    return texts


def stream_of(texts: list[str]) -> list[int]:
    """The corpus as one token stream, computed here: GPT-2's ids of each document, then end-of-text."""
    tokenizer = Tokenizer()  # GPT-2's BPE, one text at a time (the DataModule encodes in batches)
    return [i for text in texts for i in [*tokenizer.encode(text), tokenizer.eot_id]]


def test_few_documents_hold_out_the_tail_of_the_token_stream(tmp_path):
    texts = three_files(tmp_path / "corpus")
    dm = TextFiles(path=str(tmp_path / "corpus"), block_size=128, batch_size=8, num_workers=0)
    dm.prepare_data()
    dm.setup("fit")
    stream = stream_of(texts)
    held = max(math.ceil(0.01 * len(stream)), 2)  # 1% of the tokens, at least one target
    train, val = np.asarray(dm.tokens("train")).tolist(), np.asarray(dm.tokens("val")).tolist()
    assert val == stream[-held:] and train == stream[:-held]  # every document trains; the last tokens validate
    tail = Tokenizer().decode([t for t in val if t != Tokenizer().eot_id])  # the tail's text, as written
    stats = dm.text_stats("val")  # word perplexity and bits per byte of the validation part: its own counts
    assert stats["bytes"] == len(tail.encode()) and stats["words"] == len(tail.split()) + val.count(50256)
    batch = next(iter(dm.train_dataloader()))  # one optimizer step of 8 windows from fewer than 8 whole windows
    assert batch.inputs.shape == (8, 128)
    for x, y in zip(batch.inputs.tolist(), batch.targets.tolist(), strict=True):
        start = next(i for i in range(len(train) - 128) if train[i : i + 128] == x)
        assert y == train[start + 1 : start + 129]


def test_enough_documents_still_hold_out_whole_documents(tmp_path):
    texts = three_files(tmp_path / "corpus")
    dm = TextFiles(path=str(tmp_path / "corpus"), block_size=16, batch_size=2, num_workers=0, val_fraction=0.34)
    dm.setup("fit")  # 3 x 0.34 >= 1: one document's worth, picked by the stable hash as before
    tokenizer = dm.tokenizer
    val = tokenizer.decode(np.asarray(dm.tokens("val")).tolist())
    assert val.count("<|endoftext|>") == 1 and val.removesuffix("<|endoftext|>") in texts


def test_a_corpus_shorter_than_one_window_says_what_fits_before_training(tmp_path, monkeypatch, capsys):
    texts = three_files(tmp_path / "corpus", words=12)
    stream = stream_of(texts)
    train_tokens = len(stream) - 2
    monkeypatch.chdir(tmp_path)
    args = ["fit", "-c", str(CONFIGS / "pretrain_text.yaml"), "-c", str(CONFIGS / "smoke.yaml")]
    with pytest.raises(SystemExit) as exit_info:
        run([*args, "--data.path", str(tmp_path / "corpus")])
    out, err = capsys.readouterr()
    fits = 2 ** int(math.log2(train_tokens - 1))
    assert exit_info.value.code == 2 and len([line for line in err.splitlines() if "error" in line]) == 1
    assert f"has {train_tokens} tokens to train on" in err and "takes 129" in err
    assert f"--model.block_size {fits} (or less) fits it" in err
    assert "Total params" not in out + err  # before the model summary
    advised = TextFiles(path=str(tmp_path / "corpus"), block_size=fits, batch_size=8, num_workers=0)
    advised.setup("fit")  # the advice works
    assert next(iter(advised.train_dataloader())).inputs.shape == (8, fits)


def test_three_files_train_with_the_defaults_through_the_cli(tmp_path, monkeypatch, caplog):
    three_files(tmp_path / "corpus")
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, logger="data_modules"):
        cli = run(
            [
                *("fit", "-c", str(CONFIGS / "pretrain_text.yaml"), "-c", str(CONFIGS / "smoke.yaml")),
                *("--data.path", str(tmp_path / "corpus"), "--trainer.max_steps", "2"),
                *("--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1"),
            ]
        )
    assert cli.trainer.global_step == 2 and cli.datamodule.batch_size == 8
    encoded = [r.getMessage() for r in caplog.records if r.getMessage().startswith("encoding ")]
    assert len(encoded) == 2
    assert "split 'train' (training part)" in encoded[0] and "split 'train' (validation part)" in encoded[1]
