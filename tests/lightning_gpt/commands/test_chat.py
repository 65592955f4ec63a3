"""generate, chat and evaluate-chat, as a user runs them, on checkpoints trained in the test."""

import io
import json
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torchmetrics.text import ROUGEScore

from callbacks import GenerateSamples
from callbacks.text_samples import markdown_sample
from data_modules import WikiText103
from lightning_gpt.__main__ import main
from lightning_gpt.chat import chat_stop_ids, chat_tokenizer, fit_history, render_prompt
from lightning_gpt.generate import SamplingSettings, generate
from lightning_gpt.loading import load_checkpoint
from tests.conftest import command, synthetic_conversations, tiny_module, trainer, write_hub_folder


def run_main(monkeypatch, capsys, *argv) -> str:
    monkeypatch.setattr(sys, "argv", ["lightning-gpt", *argv])
    main()
    return capsys.readouterr().out


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


def test_chat_answers_each_line_and_reset_forgets(checkpoints, capsys):
    args = ["--ckpt_path", checkpoints["chat"], "--max_new_tokens", "10", "--temperature", "0", "--system", "Be brief."]
    command("chat", args, lines=["Hi there", "What sat on the mat?", "/reset", "Hi there", "/quit", "never"])
    answers = capsys.readouterr().out.split("\n")[:-1]
    assert len(answers) == 3  # one per message; /reset and /quit print nothing; nothing after /quit
    assert answers[2] == answers[0]  # after /reset the same first message gets the same answer


def test_chat_reads_stdin_when_it_is_not_a_terminal(checkpoints, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hello\nHow are you?\n"))
    out = run_main(
        monkeypatch, capsys, "chat", "--ckpt_path", checkpoints["chat"], "--max_new_tokens", "6", "--temperature", "0"
    )
    assert out.count("\n") == 2


def test_chat_with_docs_prints_the_sources_after_each_answer(checkpoints, monkeypatch, capsys, tmp_path):
    pytest.importorskip("bm25s")
    (tmp_path / "keys.md").write_text("The spare key hangs behind the lighthouse door.\n")
    (tmp_path / "notes.txt").write_text("")
    monkeypatch.setattr(sys, "stdin", io.StringIO("Where is the spare key?\nZzz?\n"))
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


def test_chat_history_keeps_the_system_turn_and_drops_the_oldest_exchange():
    tok = chat_tokenizer()
    messages = [{"role": "system", "content": "Be brief."}]
    for i in range(6):
        messages += [{"role": "user", "content": f"question {i} " * 5}, {"role": "assistant", "content": "answer " * 5}]
    messages.append({"role": "user", "content": "last"})
    kept = fit_history(tok, messages, budget=60)
    assert kept[0]["role"] == "system" and kept[-1]["content"] == "last"
    assert len(kept) < len(messages) and kept[1]["role"] == "user"


def evaluate_chat(checkpoints, *flags: str) -> list[str]:
    return ["--ckpt_path", checkpoints["chat"], "--max_new_tokens", "8", "--device", "cpu", *flags]


def test_evaluate_chat_score_is_torchmetrics_rouge_l_of_the_greedy_answers(checkpoints, capsys):
    """The whole split (12 conversations) is the sample, so the score cannot depend on the sampling order."""
    result = command(
        "evaluate-chat", evaluate_chat(checkpoints, "--data_path", checkpoints["chat_data"], "--num_samples", "12")
    )
    assert json.loads(capsys.readouterr().out) == result
    model, tokenizer = load_checkpoint(checkpoints["chat"], "cpu")
    conversations = [row["messages"] for row in synthetic_conversations(12, seed=2)]  # the fixture's test_sft
    prompts = [render_prompt(tokenizer, messages[:1]) for messages in conversations]
    greedy = SamplingSettings(max_new_tokens=8, temperature=0, stop_ids=chat_stop_ids(tokenizer))
    answers = [tokenizer.decode(ids) for ids in generate(model, prompts, greedy)]
    rouge = ROUGEScore(rouge_keys="rougeL")
    rouge.update(answers, [messages[1]["content"] for messages in conversations])
    expected = float(rouge.compute()["rougeL_fmeasure"])
    assert expected > 0  # else a command that scored nothing would pass too
    assert result["samples"] == 12 and result["rougeL_fmeasure"] == pytest.approx(expected, abs=1e-6)


MALFORMED = {"prompt": "Hi.", "prompt_id": "x", "messages": [{"role": "assistant", "content": "I speak first."}]}


def test_evaluate_chat_on_a_split_of_malformed_rows_says_why(checkpoints, monkeypatch, capsys, tmp_path):
    data = write_hub_folder(tmp_path / "bad", {"test_sft": [MALFORMED] * 3}, config="default")
    monkeypatch.setattr(
        sys, "argv", ["lightning-gpt", "evaluate-chat", *evaluate_chat(checkpoints, "--data_path", str(data))]
    )
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert f"--data_path {data} split 'test_sft': all 3 conversations are malformed" in err
    assert "turn 0 is 'assistant' where 'user' was expected" in err


def test_evaluate_chat_warns_when_fewer_samples_than_asked_are_usable(checkpoints, capsys, tmp_path):
    rows = [MALFORMED, *synthetic_conversations(2, seed=3), MALFORMED]
    data = write_hub_folder(tmp_path / "few", {"test_sft": rows}, config="default")
    result = command("evaluate-chat", evaluate_chat(checkpoints, "--data_path", str(data), "--num_samples", "5"))
    err = capsys.readouterr().err
    assert result["samples"] == 2
    assert "warning:" in err and "only 2 usable conversations (2 skipped as malformed" in err
    assert "fewer than --num_samples 5" in err


def test_samples_callback_logs_text_to_tensorboard(wikitext_dir, tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger

    dm = WikiText103(path=str(wikitext_dir), block_size=32, batch_size=4, num_workers=0)
    samples = GenerateSamples(prompts=["The cat", "A dog"], max_new_tokens=6)
    logger = TensorBoardLogger(tmp_path, name="tb")
    run = trainer(tmp_path, 4, [samples], logger=logger, limit_val_batches=2, val_check_interval=4)
    run.fit(tiny_module(dm), dm)
    assert len(samples.last_samples) == 2 and all(samples.last_samples)
    events = EventAccumulator(logger.log_dir, size_guidance={"tensors": 0})
    events.Reload()
    assert {"samples/0/text_summary", "samples/1/text_summary"} <= set(events.Tags()["tensors"])


def test_samples_render_as_markdown_with_their_line_breaks():
    from tensorboard.plugin_util import markdown_to_safe_html  # what TensorBoard's text tab does with them

    html = markdown_to_safe_html(markdown_sample("Write a list.", "Here:\n- one *big*\n- two\nDone."))
    assert "<strong>Write a list.</strong>" in html and "<em>big</em>" in html  # markdown, not a code block
    assert "Here:<br" in html and "- two<br" in html and "<pre>" not in html  # each line on its own line


def test_test_reports_word_perplexity_and_bits_per_byte(wikitext_dir, tmp_path):
    dm = WikiText103(path=str(wikitext_dir), block_size=32, batch_size=4, num_workers=0)
    metrics = trainer(tmp_path, 1).test(tiny_module(dm), dm, verbose=False)[0]
    stats = dm.text_stats("test")
    total_nll = metrics["test_loss"] * stats["targets"]
    assert metrics["test_word_ppl"] == pytest.approx(torch.tensor(total_nll / stats["words"]).exp().item(), rel=1e-4)
    assert metrics["test_bpb"] == pytest.approx(total_nll / (0.6931471805599453 * stats["bytes"]), rel=1e-4)


def test_evaluate_chat_scores_do_not_depend_on_the_batch_size(checkpoints, capsys):
    """Answers up to 60 new tokens in a 64-token context: batched prompts must not share one length budget."""
    scores = set()
    for batch_size in ("1", "5", "12"):
        argv = ["--data_path", checkpoints["chat_data"], "--num_samples", "12", "--max_new_tokens", "60"]
        result = command("evaluate-chat", evaluate_chat(checkpoints, *argv, "--batch_size", batch_size))
        scores.add(round(result["rougeL_fmeasure"], 9))
    assert len(scores) == 1


def test_an_unreachable_hub_turns_on_offline_mode_and_the_error_names_the_flag(checkpoints, monkeypatch):
    """No HF_HUB_OFFLINE and a hub that refuses connections: datasets runs offline (a cached dataset would still
    load; others fail at once instead of after half a minute of retries), and the one line names --data_path."""
    import os
    import subprocess
    from pathlib import Path

    import datasets
    from huggingface_hub import constants

    from data_modules.hf_loading import hub_reachable, offline_unless_hub_reachable

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert not hub_reachable()
    with offline_unless_hub_reachable():
        assert datasets.config.HF_HUB_OFFLINE and constants.HF_HUB_OFFLINE
    assert not constants.HF_HUB_OFFLINE  # restored

    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[3])
    command = [sys.executable, "-m", "lightning_gpt", "evaluate-chat", "--ckpt_path", checkpoints["chat"]]
    done = subprocess.run([*command, "--data_path", "Some/dataset"], env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("lightning-gpt: error: could not reach the Hugging Face hub") and "--data_path DIR" in last
