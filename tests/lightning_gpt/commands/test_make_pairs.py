"""`lightning-gpt make-pairs`: sampled answers scored into pairs that UltraFeedback loads, resumable, clear errors."""

import json
import sys

import pyarrow.parquet as pq
import pytest
import torch

from data_modules import UltraFeedback
from data_modules.ultrafeedback import answer_rows
from lightning_gpt.__main__ import main
from lightning_gpt.chat import END_OF_TURN, chat_stop_ids, chat_tokenizer, render_prompt
from lightning_gpt.commands import make_pairs, pair_folder, pair_sampling
from lightning_gpt.errors import UserInputError
from lightning_gpt.loading import load_reward_model
from lightning_gpt.tokenizer import CharTokenizer
from lightning_gpt.training.language_model import GPTModule
from lightning_gpt.training.reward_model import RewardModule
from tests.conftest import REAL_HUB, TINY_CHAT, command, preference_folder, preference_rows, save_module

TRAIN = "default/train_prefs-00000-of-00001.parquet"


def char_chat_tokenizer(rows: list[dict]):
    """A char tokenizer over the rows' text plus the chat tokens: 36 ids, 4 of which end an answer, so a tiny random
    policy ends some answers within a few tokens and not others."""
    texts = [turn["content"] for row in rows for turn in row["chosen"] + row["rejected"]]
    return chat_tokenizer(CharTokenizer.train(texts))


def save_with_tokenizer(module, tokenizer, path) -> str:
    """As save_module, plus the tokenizer, which lightning-gpt fit stores from the data module."""
    torch.save(
        {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "tokenizer": tokenizer.to_data()},
        path,
    )
    return str(path)


@pytest.fixture
def setup(tmp_path) -> dict:
    """A tiny policy and a tiny reward model with a char chat tokenizer, and an UltraFeedback-like source folder."""
    torch.manual_seed(0)
    rows = preference_rows(12, seed=1)
    tokenizer = char_chat_tokenizer(rows)
    small = {**TINY_CHAT, "vocab_size": tokenizer.vocab_size, "block_size": 128}  # room for char prompts and answers
    return {
        "policy": save_with_tokenizer(GPTModule(**small), tokenizer, tmp_path / "policy.ckpt"),
        "reward": save_with_tokenizer(RewardModule(**small), tokenizer, tmp_path / "reward.ckpt"),
        "data": preference_folder(tmp_path / "source", rows, preference_rows(5, seed=2)),
        "tokenizer": tokenizer,
    }


@pytest.fixture
def gpt2_setup(tmp_path) -> dict:
    """Tiny GPT-2-vocabulary models: among 50,261 ids a random policy (almost) never draws one of the 4 that end an
    answer, so every answer runs to --max_new_tokens."""
    torch.manual_seed(0)
    return {
        "policy": save_module(GPTModule(**TINY_CHAT), tmp_path / "policy.ckpt"),
        "reward": save_module(RewardModule(**TINY_CHAT), tmp_path / "reward.ckpt"),
        "data": preference_folder(tmp_path / "source", preference_rows(12, seed=1), preference_rows(5, seed=2)),
        "tokenizer": chat_tokenizer(),
    }


def argv(setup: dict, out, *extra) -> list[str]:
    return ["--ckpt_path", setup["policy"], "--reward_ckpt", setup["reward"], "--data_path", str(setup["data"]),
            "--num_prompts", "6", "--num_candidates", "3", "--max_new_tokens", "12", "--batch_size", "6",
            "--shard_size", "2", "--top_p", "1", "--out", str(out), "--device", "cpu", *extra]  # fmt: skip


def record_candidates(monkeypatch, tokenizer) -> dict:
    """Wraps pair_sampling.generate to record, per prompt (its ids), each sampled answer's text and whether it ended
    (a stop id drawn, which generate() leaves out) or was cut at the batch's token budget."""
    candidates, real_generate = {}, pair_sampling.generate

    def recording(model, prompts, settings, *rest, **kwargs):
        outputs = real_generate(model, prompts, settings, *rest, **kwargs)
        for prompt, tokens in zip(prompts, outputs, strict=True):
            ended = len(tokens) < settings.max_new_tokens
            candidates.setdefault(tuple(prompt), []).append((tokenizer.decode(tokens), ended))
        return outputs

    monkeypatch.setattr(pair_sampling, "generate", recording)
    return candidates


def test_pairs_are_the_best_and_worst_answer_and_ultrafeedback_trains_on_them(setup, tmp_path):
    summary = command("make-pairs", argv(setup, tmp_path / "pairs"))
    assert summary["prompts"] == 6 and summary["copied_split"] == "test_prefs"
    assert summary["pairs"] >= 3 and summary["pairs"] + sum(summary["skipped_prompts"].values()) == 6
    rows = pq.read_table(tmp_path / "pairs" / TRAIN).to_pylist()
    source = {row["prompt_id"]: row for row in preference_rows(12, seed=1)[:6]}
    ids = [row["prompt_id"] for row in rows]
    assert len(ids) == summary["pairs"] and ids == [i for i in source if i in ids]  # of the first 6, once, in order
    reward, tokenizer = load_reward_model(setup["reward"], "cpu")
    end = tokenizer.token_id(END_OF_TURN)
    for row in rows:
        assert row["chosen"][:-1] == row["rejected"][:-1] == source[row["prompt_id"]]["chosen"][:-1]
        assert row["score_chosen"] > row["score_rejected"] and row["chosen"][-1] != row["rejected"][-1]
        prompt = render_prompt(tokenizer, row["chosen"][:-1])
        sides = [(prompt, [*tokenizer.encode(side[-1]["content"]), end]) for side in (row["chosen"], row["rejected"])]
        with torch.inference_mode():  # the scores are the reward model's for the pair as it will be trained on
            rescored = reward.rewards(*answer_rows(sides, tokenizer.eot_id)).tolist()
        assert rescored == pytest.approx([row["score_chosen"], row["score_rejected"]], abs=1e-5)
    copied = pq.read_table(tmp_path / "pairs" / "default/test_prefs-00000-of-00001.parquet").to_pylist()
    assert copied == preference_rows(5, seed=2)

    dm = UltraFeedback(path=str(tmp_path / "pairs"), block_size=64, batch_size=2, num_workers=0, val_fraction=0.2)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    x, step_pairs = batch.inputs, batch.step_count
    assert x.shape[0] == 4 and int(step_pairs) == 2


def test_a_run_interrupted_or_partly_deleted_resumes_to_the_same_output(setup, tmp_path, monkeypatch):
    pairs = command("make-pairs", argv(setup, tmp_path / "straight"))["pairs"]
    expected = {name: (tmp_path / "straight" / name).read_bytes() for name in (TRAIN, "README.md")}

    saved, real_save = [], pair_folder.save_shard

    def killed_after_one(path, shard):
        if saved:
            raise KeyboardInterrupt
        saved.append(path)
        real_save(path, shard)

    monkeypatch.setattr(make_pairs, "save_shard", killed_after_one)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        command("make-pairs", argv(setup, out))
    assert len(list((out / pair_folder.WORK).glob("shard-*.json"))) == 1 and not (out / TRAIN).exists()
    monkeypatch.setattr(make_pairs, "save_shard", real_save)
    made, real_make = [], pair_sampling.make_shard
    monkeypatch.setattr(
        pair_sampling, "make_shard", lambda prompts, *rest: made.append(prompts) or real_make(prompts, *rest)
    )
    assert command("make-pairs", argv(setup, out))["pairs"] == pairs
    assert {name: (out / name).read_bytes() for name in expected} == expected
    assert len(made) == 2  # the shard saved before the kill was not redone

    (out / pair_folder.WORK / "shard-00001.json").unlink()  # part of the output lost: only that part is redone
    (out / TRAIN).unlink()
    assert command("make-pairs", argv(setup, out))["pairs"] == pairs
    assert {name: (out / name).read_bytes() for name in expected} == expected
    assert len(made) == 3


def test_ties_and_identical_answers_give_no_pair():
    prompt = pair_sampling.Prompt("p", [{"role": "user", "content": "Hi."}], [1, 2])
    assert pair_sampling.pick_pair(prompt, ["A.", "A.", "A."], [1.0, 2.0, 3.0]) == "all answers the same"
    assert pair_sampling.pick_pair(prompt, ["A.", "B."], [1.5, 1.5]) == "best and worst scores tie"
    assert pair_sampling.pick_pair(prompt, ["A.", " ", ""], [1.0, 2.0, 3.0]) == "fewer than 2 non-empty answers"
    pair = pair_sampling.pick_pair(prompt, ["A.", "B.", "C."], [0.5, 2.0, -1.0])
    assert (pair["chosen"][-1]["content"], pair["rejected"][-1]["content"]) == ("B.", "C.")
    assert (pair["score_chosen"], pair["score_rejected"]) == (2.0, -1.0)
    # None: an answer cut at the token budget, never in a pair, whatever the others.
    assert pair_sampling.pick_pair(prompt, ["A.", "B.", "C."], [None, 2.0, None]) == "fewer than 2 finished answers"
    pair = pair_sampling.pick_pair(prompt, ["A.", "B.", "C.", "D"], [0.5, None, -1.0, None])
    assert (pair["chosen"][-1]["content"], pair["rejected"][-1]["content"]) == ("A.", "C.")


def test_answers_cut_at_max_new_tokens_never_enter_a_pair_and_their_prompts_are_counted(setup, tmp_path, monkeypatch):
    candidates = record_candidates(monkeypatch, setup["tokenizer"])
    summary = command("make-pairs", argv(setup, tmp_path / "pairs"))
    assert len(candidates) == 6 and all(len(answers) == 3 for answers in candidates.values())
    rows = pq.read_table(tmp_path / "pairs" / TRAIN).to_pylist()
    for row in rows:
        answers = candidates[tuple(render_prompt(setup["tokenizer"], row["chosen"][:-1]))]
        ended = {text for text, ok in answers if ok}
        assert row["chosen"][-1]["content"] in ended and row["rejected"][-1]["content"] in ended
    # The run met both kinds of prompt: some left with fewer than 2 finished answers, and some with a pair though
    # one of their answers was cut (so the cut one was left out, not the prompt).
    few = [answers for answers in candidates.values() if sum(ok for _, ok in answers) < 2]
    cut = sum(not ok for answers in candidates.values() for _, ok in answers)
    assert few and summary["skipped_prompts"]["fewer than 2 finished answers"] == len(few)
    assert summary["unfinished_answers"] == cut
    paired = [candidates[tuple(render_prompt(setup["tokenizer"], row["chosen"][:-1]))] for row in rows]
    assert any(not ok for answers in paired for _, ok in answers)


def test_every_answer_cut_is_one_line_naming_max_new_tokens_and_writes_no_dataset(
    gpt2_setup, tmp_path, monkeypatch, capsys
):
    candidates = record_candidates(monkeypatch, gpt2_setup["tokenizer"])
    out = tmp_path / "pairs"
    monkeypatch.setattr(sys, "argv", ["lightning-gpt", "make-pairs", *argv(gpt2_setup, out, "--max_new_tokens", "6")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    answers = [ok for found in candidates.values() for _, ok in found]
    assert len(answers) == 18 and not any(answers)  # every answer ran to the budget
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after datasets' progress bars, if any
    assert exit_info.value.code == 2 and last.startswith("lightning-gpt: error: no pair made from the 6 prompts"), err
    assert "18 of 18 answers were cut at --max_new_tokens 6" in last and "raise --max_new_tokens" in last
    assert "Traceback" not in err
    # No dataset, and no work folder: the same --out takes the advised flags.
    assert not (out / TRAIN).exists() and not (out / "README.md").exists() and not (out / pair_folder.WORK).exists()
    pair_folder.claim_out(out, {"format": pair_folder.FORMAT, "max_new_tokens": 64})


def test_a_folder_of_an_older_make_pairs_is_not_resumed(setup, tmp_path):
    out = tmp_path / "pairs"
    command("make-pairs", argv(setup, out))
    saved = out / pair_folder.WORK / "settings.json"
    older = {key: value for key, value in json.loads(saved.read_text()).items() if key != "format"}
    saved.write_text(json.dumps(older))  # as make-pairs wrote it before cut answers were left out
    with pytest.raises(UserInputError, match=r"another version \(pairs format 1, this one writes 2\)"):
        command("make-pairs", argv(setup, out))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--num_prompts", "0"], "--num_prompts must be at least 1"),
        (["--num_candidates", "1"], "--num_candidates must be at least 2"),
        (["--split", "nope"], "--split 'nope'"),
        (["--data_path", "./missing"], "--data_path ./missing: no such folder"),
        (["--ckpt_path", "missing.ckpt"], "--ckpt_path missing.ckpt is not a readable"),
        (["--ckpt_path", "REWARD"], "is a reward model's checkpoint, which scores answers"),
        (["--reward_ckpt", "POLICY"], "is not a reward model's checkpoint"),
        (["--seed", "1"], "holds a make-pairs run with other settings ("),
    ],
)
def test_bad_input_is_one_line_naming_the_flag(change, message, setup, tmp_path, monkeypatch, capsys):
    out = tmp_path / "pairs"
    if change[0] == "--seed":  # an earlier run's folder, resumed with another seed and policy
        pair_folder.claim_out(out, {"format": pair_folder.FORMAT, "seed": 0, "policy_sha256": "an older policy"})
    change = [{"REWARD": setup["reward"], "POLICY": setup["policy"]}.get(value, value) for value in change]
    monkeypatch.setattr(sys, "argv", ["lightning-gpt", "make-pairs", *argv(setup, out), *change])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after datasets' progress bars, if any
    assert exit_info.value.code == 2 and last.startswith("lightning-gpt: error:") and message in last, err
    assert "Traceback" not in err


def test_the_chat_tokenizer_ends_answers(setup):
    assert chat_tokenizer().token_id(END_OF_TURN) in chat_stop_ids(chat_tokenizer())


@pytest.mark.skipif(not (REAL_HUB / "HuggingFaceH4" / "ultrafeedback_binarized").is_dir(), reason="no local mirror")
def test_the_real_mirror_gives_one_prompt_per_prompt_id_ending_with_a_user_turn():
    rows = make_pairs.load_split(str(REAL_HUB / "HuggingFaceH4" / "ultrafeedback_binarized"), "train_prefs")
    prompts, _ = pair_sampling.read_prompts(rows, chat_tokenizer(), limit=50, max_tokens=512)
    assert len(prompts) == 50 and len({p.prompt_id for p in prompts}) == 50
    assert all(p.turns[-1]["role"] == "user" and len(p.ids) <= 512 for p in prompts)
