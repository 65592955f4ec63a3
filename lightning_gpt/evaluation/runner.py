"""Runs the tasks of tasks.py through lm-evaluation-harness on a model and reads its results into card rows."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from lightning_gpt.errors import UserInputError
from lightning_gpt.evaluation.tasks import TaskSpec

BOOTSTRAP_ITERS = 1000  # the harness bootstraps the stderr of perplexities; a mean's is closed-form


@dataclass
class Score:
    """One row of the card."""

    task: str
    metric: str
    value: float
    stderr: float | None  # None where the harness gives none
    baseline: float | None  # what random guessing scores on the same items; None where it is not defined
    examples: int  # items scored (BLiMP: pairs over all its paradigms)
    data: str  # the hub dataset or the local folder read
    chat_template: bool  # asked through the chat template

    def to_dict(self) -> dict:
        return asdict(self)


def task_manager(tasks: list[TaskSpec]):
    """The harness's task index over these tasks' folders only (indexing all of its ~230 folders takes ~20 s)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    root = Path(lm_eval.__file__).parent / "tasks"
    folders = [str(root / t.folder) for t in tasks if t.harness]
    return TaskManager(include_defaults=False, include_path=folders, verbosity="ERROR")


def _blimp_paradigms(manager, source: str | None) -> list[str]:
    """The harness's BLiMP tasks to run: all of its group's, or those whose paradigm a local copy holds."""
    known = list(manager.task_index["blimp"].cfg["task"])
    if source is None:
        return known
    from lightning_gpt.evaluation.blimp import paradigm_names

    held = [f"blimp_{name}" for name in paradigm_names(source, "--data_path")]
    usable = [name for name in held if name in known]
    if not usable:
        raise UserInputError(f"--data_path {source}: none of its configs is a BLiMP paradigm the harness knows.")
    return usable


def task_spec(manager, task: TaskSpec, source: str | None, scratch: str) -> dict:
    """The harness's spec for `task`: a group of its tasks, each the harness's own definition with only the dataset's
    location changed for a local copy (read into `scratch`, not datasets' shared cache, which keys local folders
    loosely), and no training split."""
    # Zero-shot: no training split is read (the harness would load it for few-shot examples), so a local copy
    # needs only the split that is scored.
    local = {"training_split": None}
    if source is not None:
        local |= {"dataset_path": source, "dataset_kwargs": {"cache_dir": scratch}}
    names = _blimp_paradigms(manager, source) if task.name == "blimp" else [task.name]
    return {"group": f"card_{task.name}", "task": [{"task": name, **local} for name in names]}


def _random_baseline(samples: list[dict]) -> float:
    """Uniform guessing's expected accuracy on these items: the mean of 1 / (number of choices)."""
    return sum(1 / len(s["arguments"]) for s in samples) / len(samples)


def _group_values(results: dict, subtasks: list[str], metrics: tuple[str, ...]) -> dict:
    """The harness's group aggregate (as its BLiMP group: the plain mean over subtasks, and the stderr of that
    mean), with its own functions."""
    from lm_eval.api.metrics import aggregate_subtask_metrics, unweighted_mean_stderr

    if len(subtasks) == 1:
        return results[subtasks[0]]
    values = {}
    for metric in metrics:
        found = [results[name].get(f"{metric},none") for name in subtasks]
        stderrs = [results[name].get(f"{metric}_stderr,none") for name in subtasks]
        if None in found:
            continue
        values[f"{metric},none"] = aggregate_subtask_metrics(found, [1] * len(found), weight_by_size=False)
        if all(isinstance(e, (int, float)) for e in stderrs):
            values[f"{metric}_stderr,none"] = unweighted_mean_stderr(stderrs)
    return values


def _read_scores(result: dict, task: TaskSpec, source: str | None, chat: bool) -> list[Score]:
    subtasks = list(result["samples"])
    values = _group_values(result["results"], subtasks, task.metrics)
    samples = [s for name in subtasks for s in result["samples"][name]]
    baseline = None
    if task.baseline == "choices":  # BLiMP: the mean of its paradigms' baselines, as its score is theirs
        per_task = [_random_baseline(result["samples"][name]) for name in subtasks]
        baseline = sum(per_task) / len(per_task)
    scores = []
    for metric in task.metrics:
        value = values.get(f"{metric},none")
        if value is None:
            continue
        stderr = values.get(f"{metric}_stderr,none")
        scores.append(Score(
            task=task.name, metric=metric, value=float(value),
            stderr=float(stderr) if isinstance(stderr, (int, float)) else None,
            baseline=baseline if metric.startswith("acc") else None,
            examples=len(samples), data=source or task.dataset, chat_template=chat,
        ))  # fmt: skip
    return scores


def evaluate_tasks(lm, tasks: list[TaskSpec], sources: dict[str, str], limit: int | None, chat: bool) -> list[Score]:
    """Each task through the harness on `lm` (a GPTHarnessLM), zero-shot; `limit` items per harness task (per
    paradigm for BLiMP). A chat model answers the tasks marked `chat` through its chat template."""
    import lm_eval

    logging.getLogger("lm-eval").setLevel(logging.ERROR)
    manager = task_manager(tasks)
    scores = []
    with tempfile.TemporaryDirectory(prefix="lightning-gpt-eval-") as scratch:
        for task in tasks:
            source = sources.get(task.name)
            spec = task_spec(manager, task, source, scratch)
            templated = chat and task.chat
            try:
                result = lm_eval.simple_evaluate(
                    model=lm, tasks=[spec], task_manager=manager, limit=limit, log_samples=True,
                    bootstrap_iters=BOOTSTRAP_ITERS, apply_chat_template=templated, verbosity="ERROR",
                )  # fmt: skip
            except (ConnectionError, FileNotFoundError, OSError) as err:
                where = source or task.dataset
                raise UserInputError(
                    f"--tasks {task.name}: its dataset {where} could not be read ({type(err).__name__}: "
                    f"{str(err)[:200]}). Offline, pass a local copy in the hub's layout with --data_path ROOT "
                    f"(ROOT/{task.dataset}) or --data_path {task.name}=DIR."
                ) from None
            scores += _read_scores(result, task, source, templated)
    return scores
