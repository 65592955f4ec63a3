"""chat and export when the file system or the input says no: one clear line, and chat carries on."""

import io
import logging
import sys
import warnings
from pathlib import Path

import pytest
import torch

from lightning_gpt.chat import chat_stop_ids, chat_tokenizer
from lightning_gpt.commands.chat_session import ChatSession, run_chat
from lightning_gpt.generate import SamplingSettings
from lightning_gpt.model import GPT, GPTConfig
from lightning_gpt.training import GPTModule
from tests.conftest import save_module

TOKENIZER = chat_tokenizer()


def session(out=None) -> ChatSession:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=TOKENIZER.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=32)).eval()
    settings = SamplingSettings(max_new_tokens=3, temperature=0, stop_ids=chat_stop_ids(TOKENIZER))
    return ChatSession(model, TOKENIZER, settings, out=out or io.StringIO())


def test_a_save_that_fails_says_why_and_the_conversation_goes_on(tmp_path):
    chat, err = session(), io.StringIO()
    run_chat(chat, ["Hello", f"/save {tmp_path}/no/such/dir/chat.json", "And now?"], err=err)
    assert [m["role"] for m in chat.messages] == ["user", "assistant", "user", "assistant"]
    (line,) = err.getvalue().strip().splitlines()
    assert "could not save to" in line and "No such file or directory" in line


def test_a_line_that_is_not_utf8_is_refused_alone_on_piped_input(monkeypatch):
    out, err = io.StringIO(), io.StringIO()
    chat = session(out)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"Hello\n\xff\xfe bad bytes\nBye\n")))
    run_chat(chat, err=err)
    assert [m["content"] for m in chat.messages if m["role"] == "user"] == ["Hello", "Bye"]
    assert len(out.getvalue().splitlines()) == 2  # one answer per good line
    (line,) = err.getvalue().strip().splitlines()
    assert "not UTF-8" in line


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    torch.manual_seed(0)
    module = GPTModule(preset="tiny", n_layer=1, n_embd=32, block_size=32, vocab_size=TOKENIZER.vocab_size)
    return save_module(module, tmp_path_factory.mktemp("ckpt") / "chat.ckpt")


@pytest.mark.skipif(not Path("/sys").is_dir(), reason="needs a folder no one may write in, even root: /sys")
def test_export_into_a_folder_it_cannot_write_is_one_line_and_exit_2(checkpoint, monkeypatch, capsys):
    pytest.importorskip("transformers")
    from lightning_gpt.__main__ import main

    monkeypatch.setattr(sys, "argv", ["lightning-gpt", "export", "--ckpt_path", checkpoint, "--out", "/sys/exported"])
    with pytest.raises(SystemExit) as ended:
        main()
    err = capsys.readouterr().err
    assert ended.value.code == 2 and err.count("\n") == 1 and "--out /sys/exported: cannot write there" in err


def test_the_exported_files_are_readable_and_generate_warns_nothing(checkpoint, tmp_path, caplog):
    transformers = pytest.importorskip("transformers")
    from lightning_gpt.atomic import ordinary_mode
    from lightning_gpt.commands.export_model import export

    folder = export(checkpoint, str(tmp_path / "hf"))
    modes = {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()}
    assert set(modes.values()) == {ordinary_mode()}, modes  # model.safetensors too, not 0600
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    with caplog.at_level(logging.WARNING), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=2, do_sample=False)
    texts = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    assert not [t for t in texts if "max_length" in t], texts


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [("--seed", str(2**64), "--seed must be an integer in"), ("--temperature", "nan", "--temperature must be")],
)
def test_generate_refuses_an_edge_value_in_one_line(checkpoint, monkeypatch, capsys, flag, value, message):
    from lightning_gpt.__main__ import main

    monkeypatch.setattr(
        sys, "argv", ["lightning-gpt", "generate", "--ckpt_path", checkpoint, "--prompt", "Hi", flag, value]
    )
    with pytest.raises(SystemExit) as ended:
        main()
    err = capsys.readouterr().err
    assert ended.value.code == 2 and err.count("\n") == 1 and message in err and "Traceback" not in err


def test_generate_samples_at_a_temperature_below_float32s_range(checkpoint, monkeypatch, capsys):
    from lightning_gpt.__main__ import main

    argv = ["lightning-gpt", "generate", "--ckpt_path", checkpoint, "--prompt", "Hi", "--max_new_tokens", "3"]
    monkeypatch.setattr(sys, "argv", [*argv, "--temperature", "1e-300", "--seed", "1"])
    main()
    tiny = capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", [*argv, "--temperature", "0"])
    main()
    assert tiny == capsys.readouterr().out  # as good as greedy, and no NaN on the way
