"""lightning-gpt evaluate: our scores are lm-evaluation-harness's on the exported model, the command runs offline on
local copies and writes the card (scores, baselines, the stage chain), --compare, and its errors."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from tests.conftest import REPO, benchmark_mirror, command

pytest.importorskip("lm_eval")


def tiny_checkpoint(path, chat: bool = False, block_size: int = 48, **extra) -> str:
    """A tiny random GPT as `fit` saves it (block_size small, so long documents span several windows)."""
    from lightning_gpt.chat import chat_tokenizer
    from lightning_gpt.tokenizer import Tokenizer
    from lightning_gpt.training import GPTModule

    tokenizer = chat_tokenizer() if chat else Tokenizer()
    module = GPTModule(preset="tiny", n_layer=2, n_embd=32, block_size=block_size, vocab_size=tokenizer.vocab_size)
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            "tokenizer": tokenizer.to_data(),
            **extra,
        },
        path,
    )
    return str(path)


@pytest.fixture
def mirror(tmp_path):
    return benchmark_mirror(tmp_path / "hub")


def harness_run(lm, specs, chat: bool = False, limit: int = 4) -> dict:
    import lm_eval

    from lightning_gpt.evaluation.runner import task_manager
    from lightning_gpt.evaluation.tasks import TASKS

    manager = task_manager(list(TASKS.values()))
    return lm_eval.simple_evaluate(
        model=lm,
        tasks=specs,
        task_manager=manager,
        limit=limit,
        log_samples=True,
        bootstrap_iters=0,
        apply_chat_template=chat,
        verbosity="ERROR",
    )


def local_specs(mirror, names: list[str], scratch) -> list[dict]:
    from lightning_gpt.evaluation.runner import task_manager, task_spec
    from lightning_gpt.evaluation.tasks import TASKS, parse_data_paths

    tasks = [TASKS[n] for n in names]
    sources = parse_data_paths([str(mirror)], tasks)
    manager = task_manager(tasks)
    return [task_spec(manager, t, sources[t.name], str(scratch)) for t in tasks]


def responses(result: dict) -> dict[str, list]:
    """Each task's per-request (loglikelihood, is_greedy) or rolling loglikelihood, in the harness's doc order."""
    return {name: [r[0] for s in samples for r in s["resps"]] for name, samples in result["samples"].items()}


@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat"])
def test_our_loglikelihoods_are_the_harness_ones_on_the_exported_model(tmp_path, mirror, chat):
    """Every request of every task (multiple choice, BLiMP's empty context, lambada, wikitext's rolling windows,
    and a chat model through its chat template) within 1e-5 of the harness's HFLM on `lightning-gpt export`'s
    folder, with the same greedy flags and the same metrics."""
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from lm_eval.models.huggingface import HFLM

    from lightning_gpt.commands.export_model import export
    from lightning_gpt.evaluation.harness import GPTHarnessLM
    from lightning_gpt.loading import load_checkpoint

    ckpt = tiny_checkpoint(tmp_path / "m.ckpt", chat=chat)
    export(ckpt, str(tmp_path / "hf"), "float32")
    model, tokenizer = load_checkpoint(ckpt, "cpu")
    names = ["arc_easy", "piqa"] if chat else ["blimp", "hellaswag", "winogrande", "lambada_openai", "wikitext"]
    specs = local_specs(mirror, names, tmp_path / "scratch")
    ours = harness_run(GPTHarnessLM(model, tokenizer, batch_size=3), specs, chat=chat)
    theirs = harness_run(
        HFLM(pretrained=str(tmp_path / "hf"), device="cpu", batch_size=3, dtype="float32"), specs, chat=chat
    )
    mine, hf = responses(ours), responses(theirs)
    assert mine.keys() == hf.keys() and len(mine) == len(names) + ("blimp" in names)  # BLiMP: two paradigms
    for name in mine:
        assert len(mine[name]) == len(hf[name]) > 0
        for a, b in zip(mine[name], hf[name], strict=True):
            a, b = (a, b) if isinstance(a, tuple) else ((a, None), (b, None))  # rolling: a float per document
            assert a[0] == pytest.approx(b[0], abs=1e-5)
            assert a[1] == b[1]
        assert ours["results"][name] == pytest.approx(theirs["results"][name], abs=1e-6)
    if chat:  # the template was used: the context holds the chat markers
        context = ours["samples"]["arc_easy"][0]["arguments"][0][0]
        assert context.startswith("<|endoftext|><|user|>Question:") and context.endswith("<|assistant|>")


def test_the_callbacks_blimp_score_is_the_harness_group_score(tmp_path, mirror):
    """lightning_gpt.evaluation.blimp (what the training callback runs, without the harness) gives per paradigm and
    overall the accuracy the harness's blimp tasks give on the same pairs."""
    from lightning_gpt.evaluation.blimp import encode_paradigms, read_paradigms, score_blimp
    from lightning_gpt.evaluation.harness import GPTHarnessLM
    from lightning_gpt.loading import load_checkpoint

    model, tokenizer = load_checkpoint(tiny_checkpoint(tmp_path / "m.ckpt"), "cpu")
    ours = score_blimp(model, encode_paradigms(tokenizer, read_paradigms(str(mirror / "nyu-mll/blimp"), 5, "x")))
    result = harness_run(GPTHarnessLM(model, tokenizer), local_specs(mirror, ["blimp"], tmp_path / "s"), limit=5)
    accs = {name.removeprefix("blimp_"): result["results"][name]["acc,none"] for name in result["samples"]}
    assert {k: v for k, v in ours.items() if k != "blimp"} == pytest.approx(accs)
    assert ours["blimp"] == pytest.approx(sum(accs.values()) / 2)


def pretraining_then_sft(tmp_path) -> tuple[str, str]:
    """Two checkpoints as fit writes them: a pretraining run and an SFT run that started from it."""
    data = {
        "class": "WikiText103",
        "path": "../shared/data/hub/Salesforce/wikitext",
        "name": "wikitext-103-raw-v1",
        "train_split": "train",
    }
    pre = tiny_checkpoint(tmp_path / "pre.ckpt", global_step=40, tokens_seen=40960, data=data)
    chat = {"class": "UltraChat", "path": "HuggingFaceH4/ultrachat_200k", "name": None, "train_split": "train_sft"}
    sft_dir = tmp_path / "runs" / "sft" / "main" / "checkpoints"
    sft_dir.mkdir(parents=True)
    from lightning_gpt.training import GPTModule

    sft = tiny_checkpoint(sft_dir / "last.ckpt", chat=True, global_step=60, tokens_seen=44000, data=chat)
    checkpoint = torch.load(sft, weights_only=True)
    checkpoint["hyper_parameters"]["init_from"] = pre
    checkpoint["hyper_parameters"]["_class_path"] = GPTModule.__module__ + ".GPTModule"
    torch.save(checkpoint, sft)
    return pre, sft


def test_evaluate_writes_the_card_beside_the_checkpoint(tmp_path, mirror):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    pre, sft = pretraining_then_sft(tmp_path)
    card = command(
        "evaluate",
        [
            "--ckpt_path",
            sft,
            "--tasks",
            "blimp,hellaswag,lambada_openai",
            "--limit",
            "3",
            "--data_path",
            str(mirror),
            "--batch_size",
            "4",
        ],
    )
    folder = tmp_path / "runs" / "sft" / "main" / "eval"
    saved = json.loads((folder / "last.json").read_text())
    assert saved == json.loads(json.dumps(card.to_dict()))
    rows = {(s["task"], s["metric"]): s for s in saved["scores"]}
    assert list(rows) == [
        ("blimp", "acc"),
        ("hellaswag", "acc"),
        ("hellaswag", "acc_norm"),
        ("lambada_openai", "acc"),
        ("lambada_openai", "perplexity"),
    ]
    assert rows["blimp", "acc"]["examples"] == 6 and rows["blimp", "acc"]["baseline"] == 0.5  # 2 paradigms x 3
    assert rows["hellaswag", "acc"]["baseline"] == 0.25 and rows["hellaswag", "acc"]["examples"] == 3
    assert rows["lambada_openai", "perplexity"]["baseline"] is None
    assert rows["hellaswag", "acc"]["data"] == str(mirror / "Rowan" / "hellaswag")
    assert all(0 <= rows[k]["value"] <= 1 for k in rows if k[1].startswith("acc"))
    assert rows["blimp", "acc"]["stderr"] > 0
    # the stage chain, read from the two checkpoints, first stage first
    kinds = [(s["kind"], s["steps"], s["tokens"], s["checkpoint"]) for s in saved["stages"]]
    assert kinds == [("pretraining", 40, 40960, pre), ("SFT", 60, 44000, sft)]
    assert (
        "WikiText103 ../shared/data/hub/Salesforce/wikitext (wikitext-103-raw-v1), split train"
        in saved["stages"][0]["data"]
    )
    markdown = (folder / "last.md").read_text()
    assert (
        "| blimp | acc |" in markdown
        and "1. pretraining on WikiText103" in markdown
        and "2. SFT on UltraChat" in markdown
    )
    events = EventAccumulator(str(folder))
    events.Reload()
    assert events.Scalars("hellaswag/acc_norm")[0].value == pytest.approx(rows["hellaswag", "acc_norm"]["value"])
    assert events.Scalars("hellaswag/acc_norm")[0].step == 60


def test_the_random_baseline_counts_each_items_choices(tmp_path, mirror):
    """ARC items have 3 or 4 choices: the baseline is the mean of 1/choices over the items scored."""
    import pyarrow.parquet as pq

    ckpt = tiny_checkpoint(tmp_path / "m.ckpt")
    card = command(
        "evaluate",
        ["--ckpt_path", ckpt, "--tasks", "arc_easy", "--data_path", str(mirror), "--out", str(tmp_path / "card")],
    )
    rows = pq.read_table(mirror / "allenai/ai2_arc/ARC-Easy/test-00000-of-00001.parquet").to_pylist()
    expected = sum(1 / len(r["choices"]["text"]) for r in rows) / len(rows)
    assert {len(r["choices"]["text"]) for r in rows} == {3, 4}
    assert card.scores[0]["baseline"] == pytest.approx(expected)
    assert card.scores[0]["examples"] == len(rows)


def test_compare_puts_cards_side_by_side_with_differences_against_stderr(tmp_path, capsys):
    from lightning_gpt.evaluation.card import Card, Stage

    def card(name: str, kind: str, acc: float, stderr: float) -> str:
        score = {
            "task": "blimp",
            "metric": "acc",
            "value": acc,
            "stderr": stderr,
            "baseline": 0.5,
            "examples": 100,
            "data": "d",
            "chat_template": False,
        }
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(Card(name, [Stage(name, kind, "d", 1, 1)], [score]).to_dict()))
        return str(path)

    paths = [card("a", "pretraining", 0.60, 0.03), card("b", "SFT", 0.64, 0.03), card("c", "DPO", 0.80, 0.04)]
    cards, (header, rows) = command("evaluate", ["--compare", *paths])
    assert header == [
        "task",
        "metric",
        "A (pretraining)",
        "B (SFT)",
        "C (DPO)",
        "B (SFT) - A (pretraining)",
        "beyond stderr",
        "C (DPO) - B (SFT)",
        "beyond stderr",
    ]
    # 0.04 < hypot(0.03, 0.03) = 0.0424; 0.16 > hypot(0.03, 0.04) = 0.05
    assert rows == [["blimp", "acc", "0.6000", "0.6400", "0.8000", "+0.0400", "no (0.0424)", "+0.1600", "yes (0.0500)"]]
    assert "C (DPO) - B (SFT)" in capsys.readouterr().out


def run_main(monkeypatch, capsys, *argv) -> str:
    from lightning_gpt.__main__ import main

    monkeypatch.setattr(sys, "argv", ["lightning-gpt", "evaluate", *argv])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("lightning-gpt: error: ")
    return err


def test_bad_input_is_one_line_naming_the_flag(tmp_path, mirror, monkeypatch, capsys):
    ckpt = tiny_checkpoint(tmp_path / "m.ckpt")
    assert "--tasks blimp,mmlu: unknown task 'mmlu'" in run_main(
        monkeypatch, capsys, "--ckpt_path", ckpt, "--tasks", "blimp,mmlu"
    )
    err = run_main(monkeypatch, capsys, "--ckpt_path", ckpt, "--data_path", str(tmp_path / "nowhere"))
    assert f"--data_path {tmp_path / 'nowhere'}: no such folder" in err
    err = run_main(monkeypatch, capsys, "--ckpt_path", ckpt, "--tasks", "piqa", "--data_path", str(tmp_path))
    assert f"no copy of piqa's dataset baber/piqa at {tmp_path / 'baber/piqa'}" in err
    assert "--limit must be a positive integer" in run_main(monkeypatch, capsys, "--ckpt_path", ckpt, "--limit", "0")
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as without the extra: the import fails
    assert 'pip install -e ".[eval]"' in run_main(monkeypatch, capsys, "--ckpt_path", ckpt)


def test_a_hub_dataset_offline_says_how_to_point_at_a_local_copy(tmp_path, monkeypatch, capsys):
    err = run_main(monkeypatch, capsys, "--ckpt_path", tiny_checkpoint(tmp_path / "m.ckpt"), "--tasks", "piqa")
    assert "--tasks piqa: its dataset baber/piqa could not be read" in err and "--data_path" in err


def test_the_card_tells_a_held_out_score_from_an_in_distribution_one():
    from lightning_gpt.evaluation.card import Card, Stage

    stages = [
        Stage("pre.ckpt", "pretraining", "WikiText103 /data/WikiText-103, split train", 4, 9),
        Stage("sft.ckpt", "SFT", "UltraChat200k /data/ultrachat_200k, split train_sft", 2, 3),
    ]
    scores = [
        {
            "task": t,
            "metric": "acc",
            "value": 0.5,
            "stderr": 0.1,
            "baseline": None,
            "examples": 1,
            "data": "d",
            "chat_template": False,
        }
        for t in ("blimp", "wikitext")
    ]
    card = Card("sft.ckpt", stages, scores)
    assert card.provenance() == [
        "blimp: held out (no stage's data is blimp)",
        "wikitext: in distribution (stage 1 trained on wikitext text)",
    ]
    assert "- wikitext: in distribution" in card.markdown() and "blimp: held out" in card.text()


def chat_folder(root, rows: list[dict], split: str):
    from tests.conftest import write_hub_folder

    return str(write_hub_folder(root, {split: rows}, config="default"))


def test_chat_rouge_is_rouge_l_of_the_greedy_answers(tmp_path):
    """Some references are the model's own greedy answers (computed here first), the others another text: the
    card's ROUGE-L is torchmetrics' over the pairs the seed samples, and evaluate-chat's on the same data."""
    from torchmetrics.text import ROUGEScore

    from lightning_gpt.chat import chat_stop_ids
    from lightning_gpt.commands.evaluate_chat import opening_turns
    from lightning_gpt.generate import SamplingSettings, generate
    from lightning_gpt.loading import load_checkpoint
    from tests.conftest import synthetic_conversations

    ckpt = tiny_checkpoint(tmp_path / "chat.ckpt", chat=True, block_size=64)
    model, tokenizer = load_checkpoint(ckpt, "cpu")
    rows = synthetic_conversations(6, seed=3, turns=1)
    prompts, _, _ = opening_turns(tokenizer, (r["messages"] for r in rows), 6)
    settings = SamplingSettings(max_new_tokens=8, temperature=0, stop_ids=chat_stop_ids(tokenizer))
    answers = [tokenizer.decode(a) for a in generate(model, prompts, settings)]
    order = torch.randperm(6, generator=torch.Generator().manual_seed(0)).tolist()  # the sample's order (seed 0)
    for i in order[:3]:  # 3 of the 4 sampled copy the answer; of the first 4 rows, only 2 would
        rows[i]["messages"][1]["content"] = answers[i]
    folder = chat_folder(tmp_path / "ultrachat", rows, "test_sft")
    rouge = ROUGEScore(rouge_keys="rougeL")
    sample = order[:4]  # 4 of the 6: which ones is the seed's
    rouge.update([answers[i] for i in sample], [rows[i]["messages"][1]["content"] for i in sample])
    expected = float(rouge.compute()["rougeL_fmeasure"])
    card = command(
        "evaluate",
        [
            "--ckpt_path",
            ckpt,
            "--tasks",
            "chat_rouge",
            "--data_path",
            f"chat_rouge={folder}",
            "--chat_samples",
            "4",
            "--max_new_tokens",
            "8",
            "--out",
            str(tmp_path / "c"),
        ],
    )
    (score,) = card.scores
    assert (score["task"], score["metric"], score["examples"]) == ("chat_rouge", "rougeL_f", 4)
    assert score["value"] == pytest.approx(expected) and expected > 0.3  # the copied answers score 1
    chat = command(
        "evaluate-chat", ["--ckpt_path", ckpt, "--data_path", folder, "--num_samples", "4", "--max_new_tokens", "8"]
    )
    assert chat["rougeL_fmeasure"] == pytest.approx(score["value"])


def test_chat_reward_scores_answers_and_their_win_rate_against_another_checkpoint(tmp_path):
    from data_modules.ultrafeedback import answer_rows
    from lightning_gpt.chat import chat_stop_ids, chat_tokenizer, render_answer, render_prompt
    from lightning_gpt.generate import SamplingSettings, generate
    from lightning_gpt.loading import load_checkpoint, load_reward_model
    from lightning_gpt.training import RewardModule
    from tests.conftest import preference_rows

    torch.manual_seed(1)
    this = tiny_checkpoint(tmp_path / "this.ckpt", chat=True, block_size=64)
    torch.manual_seed(2)
    other = tiny_checkpoint(tmp_path / "other.ckpt", chat=True, block_size=64)
    # A random tiny model repeats the prompt's last token (tied embeddings); with its final norm zeroed, all logits
    # are 0 and it writes token 0: the two checkpoints answer differently.
    weights = torch.load(other, weights_only=True)
    weights["state_dict"]["model.norm.weight"].zero_()
    torch.save(weights, other)
    tokenizer = chat_tokenizer()
    reward = RewardModule(preset="tiny", n_layer=2, n_embd=32, block_size=64, vocab_size=tokenizer.vocab_size)
    torch.save(
        {"state_dict": reward.state_dict(), "hyper_parameters": dict(reward.hparams), "tokenizer": tokenizer.to_data()},
        tmp_path / "reward.ckpt",
    )
    rows = preference_rows(5, seed=4)
    folder = chat_folder(tmp_path / "prefs", rows, "test_prefs")

    def reward_card(against: str, out: str):
        flags = ["--ckpt_path", this, "--tasks", "chat_reward", "--data_path", f"chat_reward={folder}"]
        flags += ["--reward_ckpt", str(tmp_path / "reward.ckpt"), "--against", against, "--chat_samples", "5"]
        return command("evaluate", [*flags, "--max_new_tokens", "6", "--out", str(tmp_path / out)])

    card = reward_card(other, "c")
    got = {s["metric"]: s for s in card.scores}
    # Independently: each model's greedy answers to the 5 prompts, scored by the reward model.
    scorer, _ = load_reward_model(str(tmp_path / "reward.ckpt"))
    settings = SamplingSettings(max_new_tokens=6, temperature=0, stop_ids=chat_stop_ids(tokenizer))
    prompts = [render_prompt(tokenizer, [{"role": "user", "content": r["prompt"]}]) for r in rows]
    rewards, lengths = [], []
    for path in (this, other):
        model, _ = load_checkpoint(path, "cpu")
        answers = generate(model, prompts, settings)
        x, y = answer_rows(
            [(p, render_answer(tokenizer, tokenizer.decode(a))) for p, a in zip(prompts, answers, strict=True)],
            tokenizer.eot_id,
        )
        with torch.no_grad():
            rewards.append(scorer.rewards(x, y).tolist())
        lengths.append([len(a) for a in answers])
    wins = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(*rewards, strict=True)]
    assert got["reward"]["value"] == pytest.approx(sum(rewards[0]) / 5, abs=1e-6)
    assert got["against_reward"]["value"] == pytest.approx(sum(rewards[1]) / 5, abs=1e-6)
    assert got["win_rate"]["value"] == pytest.approx(sum(wins) / 5) and got["win_rate"]["baseline"] == 0.5
    assert got["answer_tokens"]["value"] == pytest.approx(sum(lengths[0]) / 5)
    assert got["against_answer_tokens"]["value"] == pytest.approx(sum(lengths[1]) / 5)
    assert rewards[0] != rewards[1] and got["reward"]["examples"] == 5
    same = reward_card(this, "d")
    assert {s["metric"]: s["value"] for s in same.scores}["win_rate"] == 0.5  # every answer ties with itself


def test_chat_tasks_need_a_chat_checkpoint_and_a_reward_model(tmp_path, monkeypatch, capsys):
    plain = tiny_checkpoint(tmp_path / "m.ckpt")
    err = run_main(
        monkeypatch, capsys, "--ckpt_path", plain, "--tasks", "chat_rouge", "--data_path", f"chat_rouge={tmp_path}"
    )
    assert "--tasks chat_rouge needs a chat checkpoint" in err
    assert "--tasks chat_reward needs --reward_ckpt" in run_main(
        monkeypatch, capsys, "--ckpt_path", plain, "--tasks", "chat_reward"
    )
    assert "--against is for --tasks chat_reward" in run_main(
        monkeypatch, capsys, "--ckpt_path", plain, "--against", plain
    )


@pytest.mark.slow
def test_evaluate_help_imports_neither_torch_nor_the_harness():
    """As every command's --help: argparse only (the harness costs seconds to import)."""
    import subprocess

    code = (
        "import sys\nfrom lightning_gpt.__main__ import command_parser\ncommand_parser('evaluate')[1].format_help()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lm_eval', 'datasets', 'lightning')))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
