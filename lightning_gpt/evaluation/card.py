"""The evaluation card: a checkpoint's scores, and what the model saw before them (its stage chain: pretraining ->
SFT -> DPO, each with its data, tokens and steps, read from the checkpoints), so that a reader can tell a held-out
score from an in-distribution one. Written as JSON and Markdown, printed as a table, compared side by side."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lightning_gpt.checkpoint_io import load_checkpoint_file
from lightning_gpt.errors import UserInputError
from lightning_gpt.reward_head import SCORE_HEAD

MAX_STAGES = 16  # an init_from chain longer than this is a loop
# The word a stage's data names when it trained on a task's corpus (default: the task's name).
CORPUS = {"arc_easy": "ai2_arc", "lambada_openai": "lambada", "chat_rouge": "ultrachat", "chat_reward": "ultrafeedback"}


@dataclass
class Stage:
    """One training stage, as its checkpoint records it."""

    checkpoint: str
    kind: str  # pretraining, SFT, DPO, reward model; "missing" when the file is gone
    data: str  # the dataset and split it trained on, or "not recorded"
    steps: int | None  # optimizer steps
    tokens: int | None  # training tokens seen

    def describe(self) -> str:
        if self.kind == "missing":
            return f"{self.checkpoint} (file not found: the stages before it are unknown)"
        steps = f"{self.steps:,} steps" if self.steps is not None else "steps not recorded"
        tokens = f"{self.tokens:,} tokens" if self.tokens is not None else "tokens not recorded"
        return f"{self.kind} on {self.data}: {steps}, {tokens} ({self.checkpoint})"


def _kind(checkpoint: dict) -> str:
    state, hparams = checkpoint.get("state_dict", {}), checkpoint.get("hyper_parameters", {})
    class_path = str(hparams.get("_class_path", ""))
    if SCORE_HEAD in state or class_path.endswith("RewardModule"):
        return "reward model"
    if class_path.endswith("DPOModule"):
        return "DPO"
    if "<|end|>" in (checkpoint.get("tokenizer") or {}).get("special_tokens", []):
        return "SFT"
    return "pretraining (continued)" if hparams.get("init_from") else "pretraining"


def _data(checkpoint: dict) -> str:
    data = checkpoint.get("data")
    if not isinstance(data, dict):
        return "data not recorded"
    name = f" ({data['name']})" if data.get("name") else ""
    return f"{data.get('class', '?')} {data.get('path', '?')}{name}, split {data.get('train_split', '?')}"


def read_stage(path: str) -> tuple[Stage, str | None]:
    """The stage a checkpoint records, and the checkpoint it started from (`init_from`), if any."""
    if not Path(path).is_file():
        return Stage(path, "missing", "", None, None), None
    checkpoint = load_checkpoint_file(path, mmap=True)
    steps = checkpoint.get("global_step")
    tokens = checkpoint.get("tokens_seen")
    stage = Stage(path, _kind(checkpoint), _data(checkpoint), int(steps) if steps is not None else None,
                  int(tokens) if tokens is not None else None)  # fmt: skip
    return stage, checkpoint.get("hyper_parameters", {}).get("init_from")


def stage_chain(path: str) -> list[Stage]:
    """The stages that made the checkpoint at `path`, first stage first, followed through `init_from`."""
    stages, seen, at = [], set(), path
    while at is not None and at not in seen and len(stages) < MAX_STAGES:
        seen.add(at)
        stage, at = read_stage(at)
        stages.append(stage)
    return stages[::-1]


def provenance(task: str, stages: list[Stage]) -> str:
    """Whether a task's corpus is one a stage trained on (an in-distribution score) or none did (held out)."""
    word = CORPUS.get(task, task).lower()
    seen = [i for i, s in enumerate(stages, 1) if word in s.data.lower()]
    if not seen:
        return f"{task}: held out (no stage's data is {word})"
    return f"{task}: in distribution (stage {', '.join(map(str, seen))} trained on {word} text)"


@dataclass
class Card:
    checkpoint: str
    stages: list[Stage]
    scores: list[dict]  # runner.Score.to_dict() rows
    settings: dict = field(default_factory=dict)  # limit, batch size, device, lm-eval version, ...

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Card:
        return cls(data["checkpoint"], [Stage(**s) for s in data["stages"]], data["scores"], data.get("settings", {}))

    @classmethod
    def read(cls, path: str) -> Card:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UserInputError(f"--compare {path}: not a card written by lightning-gpt evaluate ({err}).") from None

    def rows(self) -> list[list[str]]:
        return [
            [s["task"], s["metric"], fmt(s["value"]), fmt(s["stderr"]), fmt(s["baseline"]), str(s["examples"])]
            for s in self.scores
        ]

    def markdown(self) -> str:
        lines = [f"# Evaluation card: `{self.checkpoint}`", "", "## What the model saw", ""]
        lines += [f"{i}. {s.describe()}" for i, s in enumerate(self.stages, 1)]
        lines += ["", "## Scores", "", markdown_table(HEADER, self.rows()), ""]
        lines += [f"- {line}" for line in self.provenance()] + [""]
        if self.settings:
            lines += ["Settings: " + ", ".join(f"{k} {v}" for k, v in self.settings.items()), ""]
        return "\n".join(lines)

    def text(self) -> str:
        stages = "\n".join(f"  {i}. {s.describe()}" for i, s in enumerate(self.stages, 1))
        notes = "\n".join(self.provenance())
        return f"{self.checkpoint}\nwhat it saw:\n{stages}\n\n{text_table(HEADER, self.rows())}\n{notes}"

    def provenance(self) -> list[str]:
        return [provenance(task, self.stages) for task in dict.fromkeys(s["task"] for s in self.scores)]


HEADER = ["task", "metric", "score", "stderr", "random baseline", "examples"]


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and (abs(value) >= 1000 or math.isinf(value)):
        return f"{value:,.1f}"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows])


def compare(cards: list[Card]) -> tuple[list[str], list[list[str]]]:
    """The cards' scores side by side: each metric of the first card, each later card's value, and for each card
    after the first its difference from the one before and whether that difference exceeds its stderr (the two
    stderrs combined as independent: sqrt(a^2 + b^2))."""
    names = [f"{chr(ord('A') + i)} ({c.stages[-1].kind if c.stages else '?'})" for i, c in enumerate(cards)]
    header = ["task", "metric", *names]
    for before, after in zip(names, names[1:], strict=False):
        header += [f"{after} - {before}", "beyond stderr"]
    keyed = [{(s["task"], s["metric"]): s for s in c.scores} for c in cards]
    rows = []
    for key in keyed[0]:
        found = [k.get(key) for k in keyed]
        row = [*key, *(fmt(s["value"]) if s else "-" for s in found)]
        for before, after in zip(found, found[1:], strict=False):
            row += difference(before, after)
        rows.append(row)
    return header, rows


def difference(before: dict | None, after: dict | None) -> list[str]:
    if before is None or after is None:
        return ["-", "-"]
    diff = after["value"] - before["value"]
    if before["stderr"] is None or after["stderr"] is None:
        return [f"{diff:+.4f}", "no stderr"]
    stderr = math.hypot(before["stderr"], after["stderr"])
    return [f"{diff:+.4f}", f"{'yes' if abs(diff) > stderr else 'no'} ({stderr:.4f})"]
