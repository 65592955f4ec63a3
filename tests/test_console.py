"""What the console shows: warnings as one line in our words, piped chat answers one per line, no U+FFFD for a
character cut by the end of generation, a progress bar by optimizer step, one stop reason, and where the
checkpoints are with the command that resumes."""

import codecs
import io
import logging
import shlex
import sys
import warnings
from pathlib import Path

from callbacks.progress import StepRichProgressBar, StepTQDMProgressBar
from lightning_gpt.__main__ import main
from lightning_gpt.cli import run
from lightning_gpt.commands.chat_session import ChatSession, escape_line
from lightning_gpt.generate import SamplingSettings
from lightning_gpt.loading import load_checkpoint
from lightning_gpt.streamed_text import StreamedText
from lightning_gpt.tokenizer import Tokenizer
from tests.conftest import CONFIGS, wikitext_folder


def test_a_generate_warning_is_one_line_without_a_library_path(checkpoints, monkeypatch, capsys):
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # main() replaces it; restored after
    warnings.simplefilter("always")  # shown even if an earlier test raised it from the same line
    args = ["--ckpt_path", checkpoints["pretrain"], "--prompt", "the cat", "--max_new_tokens", "200", "--seed", "0"]
    monkeypatch.setattr(sys, "argv", ["lightning-gpt", "generate", *args])
    main()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "exceeds the context" in line]
    assert lines == [
        "lightning-gpt: warning: prompt + max_new_tokens exceeds the context of 64 tokens: generation stops after "
        f"{64 - len(Tokenizer().encode('the cat'))} new tokens for the longest prompt"
    ]
    assert "UserWarning" not in err and ".py:" not in err


def test_piped_chat_writes_each_answer_on_one_line(checkpoints):
    model, tokenizer = load_checkpoint(checkpoints["chat"], "cpu")
    out = io.StringIO()
    session = ChatSession(model, tokenizer, SamplingSettings(max_new_tokens=4), out=out, one_line=True)
    shown: list[str] = []
    session._print("first line\nsecond \\ line", shown)
    assert out.getvalue() == "first line\\nsecond \\\\ line" and "\n" not in out.getvalue()
    assert shown == ["first line\nsecond \\ line"]  # the conversation keeps the answer as it was
    text = 'a\\nb\n\\\r"c"'  # escaping is reversible: a backslash-n in the answer stays distinct from a newline
    escaped = escape_line(text)
    assert "\n" not in escaped and "\r" not in escaped
    assert escaped.encode().decode("unicode_escape") == text


def test_every_line_break_splitlines_knows_is_escaped_and_reads_back():
    # Every code point str.splitlines breaks at, found by asking it, not from our list.
    breaks = [chr(c) for c in range(0x3000) if len(f"a{chr(c)}b".splitlines()) == 2]
    assert len(breaks) == 10
    text = "é " + " ".join(f"{i}{c}\\{c}" for i, c in enumerate(breaks)) + " 🦜"
    escaped = escape_line(text)
    assert escaped.splitlines() == [escaped]
    # Python's own reader of string escapes gives the answer back (non-Latin-1 characters as \\u escapes first).
    assert codecs.decode(escaped.encode("latin-1", "backslashreplace"), "unicode_escape") == text


def test_a_character_cut_by_the_end_of_generation_is_left_out():
    tokenizer = Tokenizer()
    ids = tokenizer.encode("ok 🦜")  # the parrot is 4 UTF-8 bytes, split over byte-level tokens
    emoji_start = len(tokenizer.encode("ok"))
    assert len(ids) - emoji_start >= 2  # the test needs a character split across tokens
    cut = StreamedText(tokenizer.decode)
    released = "".join(cut.add(token) for token in ids[:-1])  # generation ends before the character's last byte
    released += cut.rest()
    assert released == "ok " and "\ufffd" not in released
    whole = StreamedText(tokenizer.decode)
    assert "".join(whole.add(token) for token in ids) + whole.rest() == "ok 🦜"


def gap_always(folder: Path) -> str:
    """The pretraining config with a train/val gap rule that fires at every validation (max_gap below any gap)."""
    text = (CONFIGS / "pretrain_wikitext103.yaml").read_text()
    assert "max_gap: 0.3" in text
    (folder / "pretrain.yaml").write_text(text.replace("max_gap: 0.3", "max_gap: -100.0"))
    return str(folder / "pretrain.yaml")


def small_smoke(tmp_path: Path) -> list[str]:
    """The smoke overlay, smaller: made-up WikiText, a 300-token BPE, 64-token windows, 2 a batch. The console is what
    these tests read; GPT-2's vocabulary over the built-in sample took 90% of their time."""
    wiki = wikitext_folder(tmp_path / "wiki")
    return ["-c", str(CONFIGS / "smoke.yaml"), "--data.path", str(wiki), "--data.tokenizer", "bpe-300",
            "--model.block_size", "64", "--data.batch_size", "2", "--data.eval_batch_size", "2"]  # fmt: skip


def gap_fit_args(tmp_path: Path, max_steps: int) -> list[str]:
    """A smoke fit whose gap rule fires at every validation (every 2 steps, one batch each)."""
    args = ["fit", "-c", gap_always(tmp_path), *small_smoke(tmp_path)]
    return args + [
        f"--trainer.max_steps={max_steps}",
        "--trainer.val_check_interval",
        "2",
        "--trainer.limit_val_batches",
        "1",
    ]


def test_a_fit_console_shows_steps_one_stop_reason_and_how_to_resume(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO)
    # The gap rule fires at every validation (max_gap below any gap); its second, at step 4, is max_steps too.
    args = gap_fit_args(tmp_path, max_steps=4)
    cli = run(args)
    assert cli.trainer.global_step == 4
    messages = [record.getMessage() for record in caplog.records]
    assert len([m for m in messages if "stopped" in m]) == 1  # max_steps, not also the gap rule
    bar = cli.trainer.progress_bar_callback
    assert isinstance(bar, StepRichProgressBar | StepTQDMProgressBar)
    assert "v_num" not in bar.get_metrics(cli.trainer, cli.model)
    if isinstance(bar, StepRichProgressBar):
        assert bar._get_train_description(cli.trainer.current_epoch).strip() == "step 4/4"
    folder = Path("runs/pretrain_wikitext103/smoke/checkpoints")
    listing = next(m for m in messages if m.startswith("checkpoints: "))
    assert listing.startswith(f"checkpoints: {folder} (") and "last.ckpt" in listing
    resume = next(m for m in messages if m.startswith("resume "))
    command = resume.split(": ", 1)[1]
    assert command == shlex.join(["lightning-gpt", *args, "--ckpt_path", "last"])
    # The printed command resumes (here one step further).
    resumed = run([*shlex.split(command)[1:], "--trainer.max_steps", "5"])
    assert resumed.trainer.global_step == 5


def test_the_stop_reason_of_the_gap_rule_is_the_only_one_before_max_steps(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO)
    args = gap_fit_args(tmp_path, max_steps=8)
    cli = run(args)
    assert cli.trainer.global_step == 4  # two validations over the gap: stopped at the second
    stops = [record.getMessage() for record in caplog.records if "stopped" in record.getMessage()]
    assert len(stops) == 1 and stops[0].startswith("TrainValGapEarlyStopping: stopped at step 4")


def test_without_rich_the_tqdm_bar_also_counts_steps(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["fit", "-c", str(CONFIGS / "pretrain_wikitext103.yaml"), *small_smoke(tmp_path)]
    args += ["--trainer.max_steps", "2", "--trainer.limit_val_batches", "0"]
    cli = run([*args, "--trainer.callbacks+=callbacks.progress.StepTQDMProgressBar"])
    bar = cli.trainer.progress_bar_callback
    assert isinstance(bar, StepTQDMProgressBar) and bar._train_progress_bar.desc.startswith("step 2/2")
    assert "v_num" not in bar.get_metrics(cli.trainer, cli.model)
