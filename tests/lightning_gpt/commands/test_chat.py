"""lightning-gpt chat as a user runs it, on a chat checkpoint trained for the tests: each line answered, /reset,
stdin, --docs with its sources, and a pretraining checkpoint refused."""

import io
import sys

import pytest

from lightning_gpt.__main__ import main
from tests.conftest import command, run_main


def test_chat_answers_each_line_and_reset_forgets(checkpoints, capsys):
    args = ["--ckpt_path", checkpoints["chat"], "--max_new_tokens", "10", "--temperature", "0", "--system", "Be brief."]
    command("chat", args, lines=["Hi there", "What sat on the mat?", "/reset", "Hi there", "/quit", "never"])
    answers = capsys.readouterr().out.split("\n")[:-1]
    assert len(answers) == 3  # one per message; /reset and /quit print nothing; nothing after /quit
    assert answers[2] == answers[0]  # after /reset the same first message gets the same answer


def test_chat_reads_stdin_when_it_is_not_a_terminal(checkpoints, monkeypatch, capsys):
    # As a pipe is: text over a byte buffer (chat reads the bytes, to refuse a non-UTF-8 line alone).
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"Hello\nHow are you?\n")))
    out = run_main(
        monkeypatch, capsys, "chat", "--ckpt_path", checkpoints["chat"], "--max_new_tokens", "6", "--temperature", "0"
    )
    assert out.count("\n") == 2


def test_chat_with_docs_prints_the_sources_after_each_answer(checkpoints, monkeypatch, capsys, tmp_path):
    pytest.importorskip("bm25s")
    (tmp_path / "keys.md").write_text("The spare key hangs behind the lighthouse door.\n")
    (tmp_path / "notes.txt").write_text("")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"Where is the spare key?\nZzz?\n")))
    args = ["chat", "--ckpt_path", checkpoints["chat"], "--max_new_tokens", "6", "--temperature", "0"]
    monkeypatch.setattr(
        sys, "argv", ["lightning-gpt", *args, "--docs", str(tmp_path / "*"), "--docs_cache", str(tmp_path / "c")]
    )
    main()
    out, err = capsys.readouterr()
    assert out.splitlines()[1::2] == ["sources: [1] keys.md, lines 1-1", "sources: (no passage matched)"]
    assert f"--docs: skipped {tmp_path / 'notes.txt'}: empty" in err


def test_chat_with_a_pretraining_checkpoint_is_refused(checkpoints):
    with pytest.raises(Exception, match="without chat tokens"):
        command("chat", ["--ckpt_path", checkpoints["pretrain"]], lines=[])
