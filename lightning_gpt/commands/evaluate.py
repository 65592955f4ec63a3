"""`lightning-gpt evaluate`: standard benchmarks through lm-evaluation-harness on a checkpoint, and its card (the
scores and the stage chain that made the model) as a table, JSON, Markdown and TensorBoard scalars; `--compare`
puts several checkpoints' cards side by side. The work: lightning_gpt/evaluation/."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lightning_gpt.errors import UserInputError

DESCRIPTION = (
    "Score a checkpoint on standard benchmarks through lm-evaluation-harness (zero-shot; the harness's own task "
    "definitions) and write its evaluation card beside it (eval/ in its run folder: JSON, Markdown, TensorBoard). "
    'Needs pip install -e ".[eval]".'
)
INSTALL = 'pip install -e ".[eval]"'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--ckpt_path", help="the checkpoint to score (pretraining, SFT or DPO)")
    which.add_argument(
        "--compare", nargs="+", metavar="CKPT", help="2 or 3 checkpoints (or their cards, .json) side by side"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--tasks", default="blimp", help="comma-separated: " + ", ".join(_task_names()))
    parser.add_argument("--limit", type=int, default=None, help="items per task (per BLiMP paradigm); default all")
    parser.add_argument("--batch_size", type=int, default=32, help="requests scored per forward pass")
    parser.add_argument("--data_path", action="append", default=[], metavar="ROOT|TASK=DIR",
                        help="local copies in the hub's layout: ROOT/<dataset id> for every task (e.g. "
                        "../shared/data/hub), or TASK=DIR for one; repeatable. Default: the hub")  # fmt: skip
    parser.add_argument("--out", default=None, help="where the card goes (default: eval/ in the checkpoint's run)")
    chat = parser.add_argument_group("chat checkpoints (--tasks chat_rouge,chat_reward)")
    chat.add_argument("--reward_ckpt", default=None, help="chat_reward: the reward model that scores the answers")
    chat.add_argument("--against", default=None, help="chat_reward: another checkpoint whose answers this one's meet")
    chat.add_argument("--chat_samples", type=int, default=100, help="held-out chats (prompts) answered")
    chat.add_argument("--max_new_tokens", type=int, default=128, help="the longest answer (greedy)")


def _task_names() -> list[str]:
    from lightning_gpt.evaluation.tasks import TASKS

    return list(TASKS)


def card_folder(ckpt_path: str, out: str | None) -> Path:
    """`--out`, else eval/ in the checkpoint's run folder (runs/<run>/<version>/ for checkpoints/<file>.ckpt)."""
    if out is not None:
        return Path(out)
    parent = Path(ckpt_path).resolve().parent
    return (parent.parent if parent.name == "checkpoints" else parent) / "eval"


def _check_settings(args: argparse.Namespace) -> None:
    if args.limit is not None and args.limit < 1:
        raise UserInputError(f"--limit must be a positive integer (items per task), got {args.limit}")
    if args.batch_size < 1:
        raise UserInputError(f"--batch_size must be a positive integer, got {args.batch_size}")
    for flag in ("chat_samples", "max_new_tokens"):
        if getattr(args, flag) < 1:
            raise UserInputError(f"--{flag} must be a positive integer, got {getattr(args, flag)}")
    if args.compare is not None and len(args.compare) not in (2, 3):
        raise UserInputError(f"--compare takes 2 or 3 checkpoints or cards, got {len(args.compare)}")
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise UserInputError(f"lightning-gpt evaluate needs lm-evaluation-harness: {INSTALL}") from None


def write_card(card, folder: Path, step: int | None) -> Path:
    """The card as <checkpoint name>.json and .md in `folder`, and its scores as TensorBoard scalars there
    (`<task>/<metric>` at the checkpoint's step)."""
    from torch.utils.tensorboard import SummaryWriter

    from lightning_gpt.atomic import write_atomic

    folder.mkdir(parents=True, exist_ok=True)
    stem = Path(card.checkpoint).stem
    write_atomic(folder / f"{stem}.json", json.dumps(card.to_dict(), indent=2) + "\n")
    write_atomic(folder / f"{stem}.md", card.markdown())
    with SummaryWriter(str(folder)) as writer:
        for s in card.scores:
            writer.add_scalar(f"{s['task']}/{s['metric']}", s["value"], global_step=step or 0)
    return folder / f"{stem}.json"


def chat_rows(name: str, model, tokenizer, source: str, args: argparse.Namespace) -> list:
    from lightning_gpt.commands.chat_scores import reward_rows, rouge_rows

    return (
        rouge_rows(model, tokenizer, source, args)
        if name == "chat_rouge"
        else reward_rows(model, tokenizer, source, args)
    )


def evaluate_checkpoint(args: argparse.Namespace, ckpt_path: str, tasks, sources, out: str | None):
    """Loads, scores and writes the card of one checkpoint; returns it."""
    import lm_eval

    from lightning_gpt.chat import is_chat
    from lightning_gpt.evaluation.card import Card, stage_chain
    from lightning_gpt.evaluation.harness import GPTHarnessLM
    from lightning_gpt.evaluation.runner import evaluate_tasks
    from lightning_gpt.loading import load_checkpoint

    model, tokenizer = load_checkpoint(ckpt_path, args.device)
    chat = is_chat(tokenizer)
    ours = [t for t in tasks if not t.harness]
    if ours and not chat:
        raise UserInputError(
            f"--tasks {ours[0].name} needs a chat checkpoint; --ckpt_path {ckpt_path} has no chat tokens."
        )
    lm = GPTHarnessLM(model, tokenizer, args.batch_size)
    scores = []
    for task in tasks:  # in the order of --tasks
        if task.harness:
            scores += evaluate_tasks(lm, [task], sources, args.limit, chat)
        else:
            scores += chat_rows(task.name, model, tokenizer, sources.get(task.name, task.dataset), args)
    stages = stage_chain(ckpt_path)
    settings = {
        "limit": args.limit, "batch_size": args.batch_size, "device": str(model.tok_emb.weight.device),
        "dtype": str(model.tok_emb.weight.dtype).removeprefix("torch."), "lm_eval": lm_eval.__version__,
        "num_fewshot": 0,
    }  # fmt: skip
    card = Card(ckpt_path, stages, [s.to_dict() for s in scores], settings)
    path = write_card(card, card_folder(ckpt_path, out), stages[-1].steps)
    print(card.text())
    print(f"wrote {path} and {path.with_suffix('.md')}")
    return card


def run(args: argparse.Namespace):
    """The card of --ckpt_path (a Card), or with --compare the cards and their comparison (header, rows)."""
    import datasets

    from lightning_gpt.evaluation.card import Card, compare, markdown_table, text_table
    from lightning_gpt.evaluation.tasks import parse_data_paths, parse_tasks

    _check_settings(args)
    tasks = parse_tasks(args.tasks)
    names = [t.name for t in tasks]
    if "chat_reward" in names and args.reward_ckpt is None:
        raise UserInputError("--tasks chat_reward needs --reward_ckpt: the reward model that scores the answers.")
    if args.against is not None and "chat_reward" not in names:
        raise UserInputError("--against is for --tasks chat_reward (the answers' win rate against that checkpoint).")
    sources = parse_data_paths(args.data_path, tasks)
    datasets.disable_progress_bars()
    if args.ckpt_path is not None:
        return evaluate_checkpoint(args, args.ckpt_path, tasks, sources, args.out)
    cards = [  # each card beside its own checkpoint: --out is for the comparison
        Card.read(p) if p.endswith(".json") else evaluate_checkpoint(args, p, tasks, sources, None)
        for p in args.compare
    ]
    header, rows = compare(cards)
    print("\n".join(f"{label}: {card.checkpoint}" for label, card in zip(header[2:], cards, strict=False)))
    print(text_table(header, rows))
    if args.out is not None:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "compare.md").write_text(markdown_table(header, rows) + "\n")
    return cards, (header, rows)
