"""The tasks `lightning-gpt evaluate` knows: which lm-evaluation-harness tasks each runs, where their data comes from
(the hub, or a local copy in the hub's layout), the metrics the card reports, and each task's random baseline.

Every task runs through the harness's own task definition (its YAML: prompt, choices, metric); only the dataset's
location is changed for a local copy. `blimp` is the harness's BLiMP group: all 67 paradigms from the hub, or the
paradigms a local copy declares (the shared sample has 12), averaged as the harness averages them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lightning_gpt.errors import UserInputError


@dataclass(frozen=True)
class TaskSpec:
    name: str  # what --tasks takes (the harness's name)
    dataset: str  # the hub dataset the harness reads (the YAML's dataset_path)
    folder: str  # the harness's task folder (lm_eval/tasks/<folder>)
    metrics: tuple[str, ...]  # what the card reports, in order
    chat: bool  # a question and an answer: asked through the chat template for a chat checkpoint
    baseline: str  # how the random baseline is got: "choices" (1 / number of choices, per item) or "none"
    harness: bool = True  # False: one of our chat metrics (lightning_gpt/commands/chat_scores.py), not the harness's


PERPLEXITIES = ("word_perplexity", "byte_perplexity", "bits_per_byte")
CHAT_REWARD = ("reward", "answer_tokens", "win_rate", "against_reward", "against_answer_tokens")
TASKS = {
    t.name: t
    for t in (
        TaskSpec("blimp", "nyu-mll/blimp", "blimp", ("acc",), chat=False, baseline="choices"),
        TaskSpec("hellaswag", "Rowan/hellaswag", "hellaswag", ("acc", "acc_norm"), chat=False, baseline="choices"),
        TaskSpec("arc_easy", "allenai/ai2_arc", "arc", ("acc", "acc_norm"), chat=True, baseline="choices"),
        TaskSpec("piqa", "baber/piqa", "piqa", ("acc", "acc_norm"), chat=True, baseline="choices"),
        TaskSpec("lambada_openai", "EleutherAI/lambada_openai", "lambada", ("acc", "perplexity"), False, "none"),
        TaskSpec("winogrande", "allenai/winogrande", "winogrande", ("acc",), chat=False, baseline="choices"),
        TaskSpec("wikitext", "EleutherAI/wikitext_document_level", "wikitext", PERPLEXITIES, False, "none"),
        # Chat checkpoints, our own metrics: ROUGE-L of greedy answers to held-out chats (test_sft) against the
        # reference answers; with --reward_ckpt, the reward of answers to held-out prompts (test_prefs), and with
        # --against, their win rate against another checkpoint's.
        TaskSpec("chat_rouge", "HuggingFaceH4/ultrachat_200k", "", ("rougeL_f",), True, "none", harness=False),
        TaskSpec("chat_reward", "HuggingFaceH4/ultrafeedback_binarized", "", CHAT_REWARD, True, "none", harness=False),
    )
}


def parse_tasks(value: str) -> list[TaskSpec]:
    """`--tasks blimp,hellaswag`: the tasks, in order, each once.

    Raises:
        UserInputError: naming --tasks and the tasks it knows, for an unknown or empty name.
    """
    names = [n.strip() for n in value.split(",")]
    unknown = [n for n in names if n not in TASKS]
    if unknown or not names:
        raise UserInputError(f"--tasks {value}: unknown task {unknown[0]!r}; pass some of: {', '.join(TASKS)}.")
    return [TASKS[n] for n in dict.fromkeys(names)]


def parse_data_paths(values: list[str], tasks: list[TaskSpec]) -> dict[str, str]:
    """Where each task's dataset is read from: `--data_path ROOT` (a mirror of the hub: ROOT/<dataset id>, e.g.
    ../shared/data/hub/nyu-mll/blimp) or `--data_path TASK=DIR` (that task's copy itself); a task no value names
    reads the hub. A named copy must exist.

    Raises:
        UserInputError: naming --data_path, for a task it does not know or a folder that is not there.
    """
    wanted = {t.name: t for t in tasks}
    roots, own = [], {}
    for value in values:
        name, sep, folder = value.partition("=")
        if sep and name in TASKS:
            if name not in wanted:
                raise UserInputError(f"--data_path {value}: {name} is not among --tasks ({', '.join(wanted)}).")
            if not Path(folder).expanduser().is_dir():
                raise UserInputError(
                    f"--data_path {value}: no such folder; pass a copy of {TASKS[name].dataset} in the hub's layout "
                    "(a README.md listing its configs, and the data files)."
                )
            own[name] = str(Path(folder).expanduser())
        elif not Path(value).expanduser().is_dir():
            raise UserInputError(
                f"--data_path {value}: no such folder; pass a folder that holds copies of the tasks' datasets in the "
                "hub's layout (ROOT/nyu-mll/blimp, ...), or TASK=DIR for one task."
            )
        else:
            roots.append(Path(value).expanduser())
    found = dict(own)
    for task in tasks:
        if task.name in found or not roots:
            continue
        copies = [root / task.dataset for root in roots if (root / task.dataset).is_dir()]
        if not copies:
            where = " or ".join(str(root / task.dataset) for root in roots)
            raise UserInputError(
                f"--data_path: no copy of {task.name}'s dataset {task.dataset} at {where}; put one there in the hub's "
                f"layout, pass --data_path {task.name}=DIR, or leave {task.name} out of --tasks."
            )
        found[task.name] = str(copies[0])
    return found
