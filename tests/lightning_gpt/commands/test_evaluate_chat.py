"""lightning-gpt evaluate-chat: ROUGE-L of the greedy answers against the references, the same whatever the batch
size, and one clear error for data it cannot use."""

import json
import os
import subprocess
import sys

import pytest
from torchmetrics.text import ROUGEScore

from lightning_gpt.__main__ import main
from lightning_gpt.chat import chat_stop_ids, render_prompt
from lightning_gpt.generate import SamplingSettings, generate
from lightning_gpt.loading import load_checkpoint
from tests.conftest import REPO, command, synthetic_conversations, write_hub_folder


def evaluate_chat(checkpoints, *flags: str) -> list[str]:
    return ["--ckpt_path", checkpoints["chat"], "--max_new_tokens", "8", "--device", "cpu", *flags]


def test_evaluate_chat_score_is_torchmetrics_rouge_l_of_the_greedy_answers(checkpoints, capsys):
    """The whole split (12 conversations) is the sample, so the score cannot depend on the sampling order."""
    result = command(
        "evaluate-chat", evaluate_chat(checkpoints, "--data_path", checkpoints["chat_data"], "--num_samples", "12")
    )
    printed = capsys.readouterr()
    assert json.loads(printed.out) == result
    # Progress on stderr, one line a batch (the default batch of 16 holds all 12).
    progress = [line for line in printed.err.splitlines() if "answered" in line]
    assert progress == [f"evaluate-chat: {n}/12 conversations answered" for n in (12,)]
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


@pytest.mark.slow
def test_evaluate_chat_scores_do_not_depend_on_the_batch_size(checkpoints, capsys):
    """Answers up to 60 new tokens in a 64-token context: batched prompts must not share one length budget."""
    scores = set()
    for batch_size in ("1", "5", "12"):
        capsys.readouterr()
        argv = ["--data_path", checkpoints["chat_data"], "--num_samples", "12", "--max_new_tokens", "60"]
        result = command("evaluate-chat", evaluate_chat(checkpoints, *argv, "--batch_size", batch_size))
        scores.add(round(result["rougeL_fmeasure"], 9))
        if batch_size == "5":  # progress after each batch: 5, 10, then the last 2
            assert capsys.readouterr().err.count("conversations answered") == 3
    assert len(scores) == 1


@pytest.mark.slow
def test_an_unreachable_hub_is_one_line_naming_the_flag(checkpoints, monkeypatch):
    """A fresh process with no HF_HUB_OFFLINE and a hub that refuses connections: the one line names --data_path (the
    switch to offline mode itself: tests/data_modules/test_hf_loading.py)."""
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env["PYTHONPATH"] = str(REPO)
    command = [sys.executable, "-m", "lightning_gpt", "evaluate-chat", "--ckpt_path", checkpoints["chat"]]
    done = subprocess.run([*command, "--data_path", "Some/dataset"], env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("lightning-gpt: error: could not reach the Hugging Face hub") and "--data_path DIR" in last
    assert "DIR/Some/dataset" in last and "wikitext" not in last  # the hint names the data asked for
