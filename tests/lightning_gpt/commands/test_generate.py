"""lightning-gpt generate as a user runs it: a reproducible continuation, a missing checkpoint, stop strings."""

import sys

import pytest
import torch

from lightning_gpt.__main__ import main
from lightning_gpt.tokenizer import Tokenizer
from lightning_gpt.training.language_model import GPTModule
from tests.conftest import run_main, save_module


def test_generate_prints_a_reproducible_continuation(checkpoints, monkeypatch, capsys):
    args = [
        "generate",
        "--ckpt_path",
        checkpoints["pretrain"],
        "--prompt",
        "The cat",
        "--max_new_tokens",
        "12",
        "--temperature",
        "1.0",
        "--top_k",
        "50",
        "--seed",
        "7",
    ]
    first = run_main(monkeypatch, capsys, *args)
    assert first.startswith("The cat") and len(first) > len("The cat\n")
    assert run_main(monkeypatch, capsys, *args) == first
    assert run_main(monkeypatch, capsys, *args[:-1], "8") != first


def test_generate_with_a_missing_checkpoint_says_so(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(
        sys, "argv", ["lightning-gpt", "generate", "--ckpt_path", str(tmp_path / "x.ckpt"), "--prompt", "a"]
    )
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert "--ckpt_path" in capsys.readouterr().err


def test_generate_never_prints_the_start_of_a_stop_string(tmp_path, monkeypatch, capsys):
    """The CLI: a stop string that begins inside one token and ends in a later one (the issue's case)."""
    torch.manual_seed(0)
    ckpt = save_module(GPTModule(preset="tiny", n_layer=1, n_embd=32, block_size=64), tmp_path / "m.ckpt")
    tokenizer = Tokenizer()
    args = ["generate", "--ckpt_path", ckpt, "--prompt", "The cat", "--temperature", "0", "--max_new_tokens", "12"]

    def printed(*extra) -> str:
        monkeypatch.setattr("sys.argv", ["lightning-gpt", *args, *extra])
        main()
        return capsys.readouterr().out.removeprefix("The cat").removesuffix("\n")

    full = printed()
    ids = tokenizer.encode(full)
    cut = len(tokenizer.decode(ids[:3]))
    split = next(k for k in range(cut + 1, len(full)) if full[k - 1] != full[k])  # some text after the boundary
    stop = full[cut - 1 : split + 1]  # from the last character of token 3 into the tokens after it
    assert printed("--stop", stop) == full[: full.index(stop)]
